"""What happens to a file after its fate is known: archive, delete, failed folder.

Moves never overwrite: a name already taken gets a numbered suffix. A move is
a hard link followed by an unlink, so a crash between the two leaves the file
in both places, never in neither; a second attempt notices the link and only
removes the original. Callers invoke these only after the ledger has
committed the state that justifies them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from hubwatchd.config import WatchConfig


def archive(watch: WatchConfig, path: Path, when: float | None = None) -> Path:
    """Move `path` (and its ready marker) into the watch's dated archive folder.

    Returns where the file now is. Raises OSError when it cannot be moved;
    the file then stays where it was. Raises FileNotFoundError when it is
    gone, after archiving its marker all the same (a crash may have come
    between the two moves).
    """
    day = time.strftime("%Y-%m-%d", time.localtime(when))
    target_dir = watch.archive_path / day / _relative_parent(watch, path)
    try:
        moved = _move(path, target_dir)
    except FileNotFoundError:
        _move_marker(watch, path, target_dir)
        raise
    _move_marker(watch, path, target_dir)
    return moved


def delete(watch: WatchConfig, path: Path) -> None:
    """Remove `path` and its ready marker; a file already gone is fine."""
    for victim in (path, _marker(watch, path)):
        if victim is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()


def move_to_failed(
    watch: WatchConfig, path: Path, reason: str, version_id: int | None = None
) -> Path:
    """Move `path` into the failed folder with NAME.reason.txt beside it.

    A path that is gone (or never was a regular file we may move, such as a
    FIFO) gets only the reason file, so the operator still learns why.
    """
    target_dir = watch.failed_path / _relative_parent(watch, path)
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        moved = _move(path, target_dir)
    except FileNotFoundError:
        moved = _free_name(target_dir, path.name)
    _move_marker(watch, path, target_dir)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    text = (
        f"file:   {path}\n"
        f"watch:  {watch.name} (task {watch.task_id}, mode {watch.mode})\n"
        f"when:   {stamp}\n"
        f"why:    {reason}\n"
        "\n"
        "To try again, put the file back into the watched folder. A changed\n"
        "(fixed) file is picked up by itself. To send it unchanged, move it\n"
        f"back, then run: hubwatchd retry {version_id or 'ID'}\n"
        "(hubwatchd history --state failed lists the ids).\n"
    )
    reason_path = moved.with_name(moved.name + ".reason.txt")
    reason_path.write_text(text, encoding="utf-8")
    return moved


def _relative_parent(watch: WatchConfig, path: Path) -> Path:
    try:
        return path.parent.relative_to(watch.path)
    except ValueError:
        return Path()


def _marker(watch: WatchConfig, path: Path) -> Path | None:
    if not watch.ready_marker:
        return None
    return path.with_name(path.name + watch.ready_marker)


def _move_marker(watch: WatchConfig, path: Path, target_dir: Path) -> None:
    marker = _marker(watch, path)
    if marker is None:
        return
    with contextlib.suppress(FileNotFoundError):
        _move(marker, target_dir)


def _names(folder: Path, name: str):
    stem, dot, suffix = name.partition(".")
    yield folder / name
    for number in range(2, 10_000):
        yield folder / f"{stem}-{number}{dot}{suffix}"


def _free_name(folder: Path, name: str) -> Path:
    for candidate in _names(folder, name):
        if not os.path.lexists(candidate):
            return candidate
    raise OSError(errno.EEXIST, f"no free name for {name}", str(folder))


def _move(path: Path, target_dir: Path) -> Path:
    """Link `path` under a free name in `target_dir`, then unlink the original."""
    target_dir.mkdir(parents=True, exist_ok=True)
    source = path.lstat()  # FileNotFoundError when gone: the caller decides
    for target in _names(target_dir, path.name):
        try:
            os.link(path, target, follow_symlinks=False)
        except FileExistsError:
            if os.path.samestat(target.lstat(), source):
                break  # linked by an earlier attempt that stopped before unlink
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # No hard links here (some SMB or FUSE mounts): a plain rename to a
            # name just seen free is the best this filesystem allows.
            target = _free_name(target_dir, path.name)
            os.rename(path, target)
            return target
        break
    else:
        raise OSError(errno.EEXIST, f"no free name for {path.name}", str(target_dir))
    path.unlink()
    return target
