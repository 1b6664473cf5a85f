"""The chaos run (bench/chaos.py) as a slow test: `pytest -m slow`.

Hub faults on about 30% of requests and five SIGKILLs of the daemon; the run
itself checks devhub's tables against what was dropped and exits 1 when a
file was lost or appended twice outside the ledger's in-doubt list.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


@pytest.mark.slow
def test_chaos_loses_nothing_and_appends_nothing_twice_unreported(tmp_path):
    result = subprocess.run(
        [sys.executable, str(CHAOS), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "lost                     0 " in result.stdout
