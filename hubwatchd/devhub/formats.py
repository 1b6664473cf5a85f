"""Rows out of an uploaded CSV, JSON or XLSX file, read as a stream.

Each reader takes the path of the body devhub spooled to disk and yields one
dict per row (column name -> value), never holding the whole file. A body
that cannot be read raises BadRows with a message that names the line or row,
which becomes the detail of a 400 answer.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = ("csv", "json", "xlsx")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_BY_EXTENSION = {".csv": "csv", ".json": "json", ".xlsx": "xlsx"}
_BY_TYPE = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/json": "json",
    XLSX_TYPE: "xlsx",
}
CSV_DELIMITERS = ",;\t|"
CHUNK = 1 << 20
# A JSON row larger than this is refused rather than buffered without bound.
MAX_JSON_ROW = 16 << 20

Row = dict[str, Any]


class BadRows(ValueError):
    """The body is not rows devhub can read; the message says where."""


def choose_format(filename: str | None, content_type: str | None) -> str | None:
    """csv, json or xlsx from the part's filename extension, then its type."""
    if filename:
        suffix = Path(filename).suffix.lower()
        if suffix in _BY_EXTENSION:
            return _BY_EXTENSION[suffix]
    if content_type:
        return _BY_TYPE.get(content_type.split(";")[0].strip().lower())
    return None


def read_rows(path: Path, fmt: str) -> Iterator[Row]:
    """The rows of the file at `path` in format `fmt`, one dict each."""
    if fmt == "csv":
        return csv_rows(path)
    if fmt == "json":
        return json_rows(path)
    if fmt == "xlsx":
        return xlsx_rows(path)
    raise ValueError(f"unknown format {fmt!r}")


# --- CSV ------------------------------------------------------------------


def sniff_delimiter(first_line: str) -> str:
    """The candidate delimiter seen most often in the header line (default ,)."""
    counts = {d: _count_unquoted(first_line, d) for d in CSV_DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _count_unquoted(line: str, char: str) -> int:
    count, quoted = 0, False
    for c in line:
        if c == '"':
            quoted = not quoted
        elif c == char and not quoted:
            count += 1
    return count


def csv_rows(path: Path) -> Iterator[Row]:
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        try:
            head = text.readline(CHUNK)
        except UnicodeDecodeError as exc:
            raise BadRows(f"line 1: not UTF-8 ({exc.reason})") from exc
        text.seek(0)
        if not head.strip():
            raise BadRows("line 1: a CSV file needs a header row")
        reader = csv.reader(text, delimiter=sniff_delimiter(head), strict=True)
        yield from _csv_records(reader)


def _csv_records(reader: Any) -> Iterator[Row]:
    header: list[str] | None = None
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except UnicodeDecodeError as exc:
            raise BadRows(f"line {reader.line_num + 1}: not UTF-8") from exc
        except csv.Error as exc:
            raise BadRows(f"line {reader.line_num}: {exc}") from exc
        if not record:
            continue  # a blank line
        if header is None:
            header = _header(record, f"line {reader.line_num}")
            continue
        if len(record) != len(header):
            message = (
                f"line {reader.line_num}: {len(record)} fields, "
                f"the header has {len(header)}"
            )
            raise BadRows(message)
        yield dict(zip(header, record, strict=True))
    if header is None:
        raise BadRows("line 1: a CSV file needs a header row")


def _header(names: list[Any], place: str) -> list[str]:
    header = ["" if name is None else str(name).strip() for name in names]
    for number, name in enumerate(header, start=1):
        if not name:
            raise BadRows(f"{place}: column {number} has no name")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise BadRows(f"{place}: column {name!r} appears twice")
        seen.add(name)
    return header


# --- JSON -----------------------------------------------------------------


def json_rows(path: Path) -> Iterator[Row]:
    """Rows of a JSON array of flat objects, decoded one object at a time."""
    decoder = json.JSONDecoder()
    with path.open("rb") as raw:
        stream = _JsonStream(raw)
        stream.expect("[")
        number = 0
        while True:
            stream.skip_space()
            if number == 0 and stream.peek() == "]":
                stream.take()
                break
            number += 1
            value = stream.decode(decoder, number)
            yield _flat_row(value, number, stream)
            stream.skip_space()
            follow = stream.take()
            if follow == "]":
                break
            if follow != ",":
                raise stream.error(f'row {number}: expected "," or "]" after it')
        stream.skip_space()
        if stream.peek() != "":
            raise stream.error("text after the closing ]")


class _JsonStream:
    """A decoded text window over the file, refilled as the decoder needs."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self._raw = raw
        self._utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._lines_before = 0  # newlines in text already dropped from _buf

    def _fill(self, at_least: int = 1) -> bool:
        """Read until `at_least` more characters follow _pos; False at EOF."""
        if self._pos:
            self._lines_before += self._buf.count("\n", 0, self._pos)
            self._buf = self._buf[self._pos :]
            self._pos = 0
        target = len(self._buf) + at_least
        while len(self._buf) < target and not self._eof:
            data = self._raw.read(CHUNK)
            try:
                self._buf += self._utf8.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise self.error(f"not UTF-8 ({exc.reason})") from exc
            self._eof = not data
        return len(self._buf) > self._pos

    def skip_space(self) -> None:
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in " \t\r\n":
                self._pos += 1
            if self._pos < len(self._buf) or not self._fill():
                return

    def peek(self) -> str:
        if self._pos >= len(self._buf):
            self._fill()
        return self._buf[self._pos : self._pos + 1]

    def take(self) -> str:
        char = self.peek()
        self._pos += len(char)
        return char

    def expect(self, char: str) -> None:
        self.skip_space()
        if self.take() != char:
            raise self.error(f"the body must be a JSON array of objects (start {char})")

    def decode(self, decoder: json.JSONDecoder, number: int) -> Any:
        want = CHUNK
        while True:
            try:
                value, end = decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                pending = len(self._buf) - self._pos
                if self._eof or pending > MAX_JSON_ROW:
                    where = self._where(exc.pos)
                    raise BadRows(f"row {number} ({where}): {exc.msg}") from exc
                self._fill(want)
                want *= 2
                continue
            except RecursionError as exc:
                where = self._where(self._pos)
                raise BadRows(f"row {number} ({where}): nested too deeply") from exc
            # A number cut at the window's end decodes, but wrongly.
            if end == len(self._buf) and not self._eof:
                self._fill(want)
                continue
            self._pos = end
            return value

    def _where(self, pos: int) -> str:
        line = self._lines_before + self._buf.count("\n", 0, pos) + 1
        column = pos - (self._buf.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {column}"

    def error(self, message: str) -> BadRows:
        return BadRows(f"{self._where(self._pos)}: {message}")


def _flat_row(value: Any, number: int, stream: _JsonStream) -> Row:
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise stream.error(f"row {number} is a {kind}, not an object")
    for name, cell in value.items():
        if isinstance(cell, dict | list):
            message = f"row {number}: field {name!r} holds an object or array"
            raise stream.error(message + "; rows must be flat")
        if not name:
            raise stream.error(f"row {number}: a field has an empty name")
    return value


# --- XLSX -----------------------------------------------------------------


def xlsx_rows(path: Path) -> Iterator[Row]:
    """Rows of the first worksheet; its first row is the header."""
    import openpyxl

    with path.open("rb") as raw:
        try:
            # A file object, not a path: openpyxl judges paths by their suffix.
            book = openpyxl.load_workbook(raw, read_only=True, data_only=True)
        except Exception as exc:  # openpyxl raises many kinds on a bad file
            raise BadRows(f"not a readable XLSX workbook: {exc}") from exc
        try:
            yield from _sheet_rows(book)
        finally:
            book.close()


def _sheet_rows(book: Any) -> Iterator[Row]:
    if not book.worksheets:
        raise BadRows("the workbook has no worksheet")
    header: list[str] | None = None
    cells_by_row = book.worksheets[0].iter_rows(values_only=True)
    number = 0
    while True:
        number += 1
        try:
            cells = next(cells_by_row)
        except StopIteration:
            break
        except Exception as exc:  # a damaged sheet part
            raise BadRows(f"row {number}: unreadable ({exc})") from exc
        values = list(cells)
        while values and values[-1] is None:
            values.pop()
        if header is None:
            if not values:
                raise BadRows(f"row {number}: the header row is empty")
            header = _header(values, f"row {number}")
            continue
        if not values:
            continue  # an empty row
        if len(values) > len(header):
            message = f"row {number}: {len(values)} cells, the header has "
            raise BadRows(message + f"{len(header)}")
        values += [None] * (len(header) - len(values))
        yield {n: _cell(v) for n, v in zip(header, values, strict=True)}
    if header is None:
        raise BadRows("row 1: the first worksheet is empty; it needs a header")


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str):
        return value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
