"""Task inputs from a local file (issue 12 item 1, the file front end of ``submit_workflow``).

One input per row, in file order, from ``.jsonl``/``.ndjson`` (an ``input`` field, else
``text``), ``.csv`` (a named column; default ``input``, else ``text``), ``.parquet`` (the
same column rule; needs pyarrow) or ``.txt`` (one input per non-blank line). Pure and
synchronous: the caller runs :func:`read_inputs` in a worker thread (the node's event loop
never waits on disk) and hands the inputs to the node's ordinary submit path.

Why a separate parser: every bad file must be refused whole, before anything is written, with
an error that says where (``row N``), and a file far larger than a workflow may hold must be
refused as soon as the limit is crossed, without reading the rest. So rows are streamed (a
line, a CSV record or a Parquet batch at a time, never the whole file as one string) and
checked one by one; only the accepted inputs are kept.

Row numbers: for ``.jsonl`` and ``.txt`` row N is line N of the file (blank lines are skipped
but keep their number); for ``.csv`` row N is the N-th record after the header, with its first
line given too; for ``.parquet`` row N is the N-th row.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from p2p.errors import NodeError

FORMATS = ("jsonl", "csv", "parquet", "text")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
DEFAULT_COLUMNS = ("input", "text")  # the field or column read when none is named, in this order
# A JSONL or text line longer than this is refused without reading it whole: far beyond any
# input the node accepts (an input of max_input_chars characters, JSON-escaped, is well below).
MIN_LINE_BYTES = 16 << 20
PARQUET_BATCH_ROWS = 4096


@dataclass
class ReadProgress:
    """Shared with the thread that reads: it advances ``done`` (bytes, or rows for Parquet)
    towards ``total`` and counts ``rows``; the event loop only reads it (plain ints, no lock
    needed for a progress display)."""

    total: int = 0
    done: int = 0
    rows: int = 0
    unit: str = "bytes"


@dataclass
class FileInputs:
    """What a file gave: its inputs in row order and where they came from."""

    path: Path
    format: str
    column: str | None  # the JSONL field, CSV or Parquet column read; None for text
    inputs: list[str] = field(default_factory=list)
    bytes: int = 0


def infer_format(path: Path, fmt: str | None = None) -> str:
    """The file's format: ``fmt`` when given, else from the extension (case-insensitive)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise NodeError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
        return fmt
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise NodeError(f"cannot tell the format of {path.name!r} from its extension {ext or '(none)'!r}; "
                        f"use {', '.join(EXTENSIONS)} or give the format ({', '.join(FORMATS)})")
    return EXTENSIONS[ext]


def check_source(path: Path, protected: Path | None = None) -> int:
    """Refuse a path that cannot be read as an input file, before any reading; return its size.

    ``protected`` is the node's data directory: its keys, clock and caches are never read as
    workflow inputs (inputs travel to every peer), compared after resolving links."""
    if not path.is_absolute():
        raise NodeError(f"the path must be absolute (it is a path on the node's machine), got {str(path)!r}")
    if protected is not None:
        real, guard = Path(os.path.realpath(path)), Path(os.path.realpath(protected))
        if real == guard or guard in real.parents:
            raise NodeError(f"{str(path)!r} is inside the node's data directory {str(protected)!r}; "
                            "its files are never read as workflow inputs")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NodeError(f"the file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise NodeError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise NodeError(f"{str(path)!r} is a directory; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise NodeError(f"{str(path)!r} is not a regular file")  # a FIFO or device would block or never end
    if not os.access(path, os.R_OK):
        raise NodeError(f"the file {str(path)!r} is not readable by the node (permission denied)")
    return st.st_size


def read_inputs(path: str | os.PathLike[str], fmt: str | None = None, column: str | None = None, *,
                max_rows: int, max_input_chars: int | None = None, protected: Path | None = None,
                progress: ReadProgress | None = None) -> FileInputs:
    """Every input of the file at ``path``, in row order, or a :class:`NodeError` naming what is
    wrong (and the row, for a row's fault). Refuses more than ``max_rows`` inputs as soon as row
    ``max_rows + 1`` is reached, no inputs at all, and inputs over ``max_input_chars``.
    Blocking: run it in a worker thread."""
    p = Path(path)
    size = check_source(p, protected)
    kind = infer_format(p, fmt)
    if column is not None and kind == "text":
        raise NodeError("a column is only read from .csv, .jsonl and .parquet files; a .txt file has one input per line")
    if column is not None and not column:
        raise NodeError("the column name is empty")
    prog = progress if progress is not None else ReadProgress()
    prog.total, prog.done, prog.rows, prog.unit = size, 0, 0, "bytes"
    out = FileInputs(p, kind, None, [], size)
    limit_line = max(MIN_LINE_BYTES, 12 * (max_input_chars or 0) + (1 << 20))
    check = _Checker(p.name, out.inputs, max_rows, max_input_chars, prog)
    try:
        if kind == "parquet":
            out.column = _read_parquet(p, column, check, prog)
        else:
            with open(p, "rb") as fh:
                if kind == "jsonl":
                    out.column = _read_jsonl(fh, column, check, limit_line, prog)
                elif kind == "text":
                    _read_text(fh, check, limit_line, prog)
                else:
                    out.column = _read_csv(fh, column, check, prog)
    except OSError as exc:
        raise NodeError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    if not out.inputs:
        where = {"csv": " (no rows after the header)", "text": " (no non-blank line)"}.get(kind, "")
        raise NodeError(f"{p.name} holds no inputs{where}; a workflow needs at least one; nothing was submitted")
    return out


class _Checker:
    """Accepts one row's input or raises the row's error; enforces the row limit."""

    def __init__(self, name: str, inputs: list[str], max_rows: int, max_chars: int | None, prog: ReadProgress) -> None:
        self.name, self.inputs, self.max_rows, self.max_chars, self.prog = name, inputs, max_rows, max_chars, prog

    def fail(self, where: str, why: str) -> NodeError:
        return NodeError(f"{self.name}: {where}: {why}; nothing was submitted")

    def add(self, value: str, where: str) -> None:
        if not value.strip():
            raise self.fail(where, "the input is empty" if not value else "the input is blank (only whitespace)")
        if self.max_chars is not None and len(value) > self.max_chars:
            raise self.fail(where, f"the input is {len(value)} characters; the maximum is scheduler.max_input_chars = {self.max_chars}")
        if len(self.inputs) >= self.max_rows:
            raise NodeError(f"{self.name} has more than {self.max_rows} inputs ({where} is input {self.max_rows + 1}); a workflow "
                            f"holds at most scheduler.max_tasks_per_workflow = {self.max_rows} tasks: split the file; "
                            "nothing was submitted")
        self.inputs.append(value)
        self.prog.rows = len(self.inputs)


def _lines(fh: BinaryIO, limit: int, check: _Checker, prog: ReadProgress) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its end of line), bounded in length, first-line BOM dropped."""
    n = 0
    while True:
        raw = fh.readline(limit + 1)
        if not raw:
            return
        n += 1
        prog.done += len(raw)
        if len(raw) > limit:
            raise check.fail(f"row {n}", f"the line is longer than {limit} bytes")
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        if n == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        yield n, raw


def _decode(raw: bytes, n: int, check: _Checker) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise check.fail(f"row {n}", f"not valid UTF-8 (byte {exc.start + 1} of the line)") from None


def _read_text(fh: BinaryIO, check: _Checker, limit: int, prog: ReadProgress) -> None:
    for n, raw in _lines(fh, limit, check, prog):
        line = _decode(raw, n, check)
        if line.strip():
            check.add(line, f"row {n}")


def _read_jsonl(fh: BinaryIO, column: str | None, check: _Checker, limit: int, prog: ReadProgress) -> str | None:
    fields = (column,) if column else DEFAULT_COLUMNS
    used: str | None = column
    for n, raw in _lines(fh, limit, check, prog):
        line = _decode(raw, n, check)
        if not line.strip():
            continue
        where = f"row {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise check.fail(where, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise check.fail(where, "not valid JSON (nested too deeply)") from None
        if not isinstance(rec, dict):
            raise check.fail(where, f"a JSON object with an {' or '.join(repr(f) for f in fields)} field is expected, "
                                    f"got a JSON {_json_kind(rec)}")
        key = next((f for f in fields if f in rec), None)
        if key is None:
            have = ", ".join(repr(k) for k in list(rec)[:10]) or "none"
            raise check.fail(where, f"no {' or '.join(repr(f) for f in fields)} field (its fields: {have})")
        value = rec[key]
        if not isinstance(value, str):
            raise check.fail(where, f"the {key!r} field must be a string, got {'null' if value is None else 'a JSON ' + _json_kind(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise check.fail(where, f"the {key!r} field holds a lone surrogate escape (not valid Unicode)") from None
        check.add(value, where)
        used = used or key
    return used


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), "null" if value is None else "number")


class _Counting(io.RawIOBase):
    """A binary file that counts the bytes read through it (for progress under csv's text layer)."""

    def __init__(self, fh: BinaryIO, prog: ReadProgress) -> None:
        self.fh, self.prog = fh, prog

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.fh.readinto(b)  # type: ignore[attr-defined]
        self.prog.done += n or 0
        return n


def _read_csv(fh: BinaryIO, column: str | None, check: _Checker, prog: ReadProgress) -> str:
    # Undecodable bytes become lone surrogates here and are refused in the row that holds them
    # (a strict decoder would fail on a whole 8 KiB chunk, at no row in particular).
    text = io.TextIOWrapper(io.BufferedReader(_Counting(fh, prog)), encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, strict=True)
    line = 0

    def parse_error(exc: Exception, what: str) -> NodeError:
        return check.fail(what, f"not valid CSV ({exc})")

    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise parse_error(exc, "the header (line 1)") from None
    if header is None:
        raise NodeError(f"{check.name} is empty: a CSV file needs a header row naming its columns; nothing was submitted")
    line = reader.line_num
    names = [c.strip() for c in header]
    if column is not None:
        if column not in header and column not in names:
            raise NodeError(f"{check.name} has no column {column!r}; its columns: {', '.join(repr(c) for c in header)}; "
                            "nothing was submitted")
        idx = header.index(column) if column in header else names.index(column)
        used = column
    else:
        found = next((c for c in DEFAULT_COLUMNS if c in names), None)
        if found is None:
            raise NodeError(f"{check.name} has no 'input' or 'text' column; its columns: {', '.join(repr(c) for c in header)}; "
                            "name the column to read (column / --column); nothing was submitted")
        idx, used = names.index(found), found
    row = 0
    while True:
        first = line + 1
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise parse_error(exc, f"row {row + 1} (line {first})") from None
        line = reader.line_num
        if not rec:  # a blank line
            continue
        row += 1
        where = f"row {row} (line {first})"
        if idx >= len(rec):
            raise check.fail(where, f"{len(rec)} field(s), so no {used!r} column (column {idx + 1})")
        value = rec[idx]
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise check.fail(where, "not valid UTF-8") from None
        check.add(value, where)
    return used


def need_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise NodeError("reading .parquet needs the pyarrow package, which is not installed on the node: "
                        "pip install pyarrow (or submit .jsonl, .csv or .txt)") from None
    return pyarrow


def _read_parquet(p: Path, column: str | None, check: _Checker, prog: ReadProgress) -> str:
    pa = need_pyarrow()
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as exc:
        raise NodeError(f"{check.name} is not a readable Parquet file: {exc}; nothing was submitted") from None
    schema = pf.schema_arrow
    names = list(schema.names)
    if column is not None:
        if column not in names:
            raise NodeError(f"{check.name} has no column {column!r}; its columns: {', '.join(repr(c) for c in names)}; "
                            "nothing was submitted")
        used = column
    else:
        found = next((c for c in DEFAULT_COLUMNS if c in names), None)
        if found is None:
            raise NodeError(f"{check.name} has no 'input' or 'text' column; its columns: {', '.join(repr(c) for c in names)}; "
                            "name the column to read (column / --column); nothing was submitted")
        used = found
    typ = schema.field(used).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)
            or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(typ))):
        raise NodeError(f"{check.name}: the column {used!r} holds {typ}, not strings; nothing was submitted")
    total = pf.metadata.num_rows
    prog.total, prog.done, prog.unit = total, 0, "rows"
    if total > check.max_rows:  # known from the footer: refuse before reading any row
        raise NodeError(f"{check.name} has {total} rows, more than {check.max_rows}; a workflow holds at most "
                        f"scheduler.max_tasks_per_workflow = {check.max_rows} tasks: split the file; nothing was submitted")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[used]):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is None:
                    raise check.fail(f"row {row}", "the input is null")
                check.add(value, f"row {row}")
            prog.done = row
    except (pa.ArrowException, OSError) as exc:
        raise NodeError(f"{check.name}: cannot read rows after row {row}: {exc}; nothing was submitted") from None
    return used
