"""The file parser of submit_workflow_file (p2p.workflow_file), as pure logic: every format
gives back exactly the rows written, in order (hypothesis: unicode, quotes, commas and line
breaks inside CSV and JSONL fields); each bad file is refused whole with an error that says
what and where (the row), reading no further than it must."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p.errors import NodeError
from p2p.workflow_file import ReadProgress, infer_format, read_inputs

TRICKY = st.sampled_from([",", '"', "'", "\n", "\r", "\\", "\t", "\u2028", "é", "ß", "日", "🦊", "\x00", " "])
TEXT = st.text(st.one_of(st.characters(codec="utf-8"), TRICKY), min_size=1, max_size=30).filter(lambda s: bool(s.strip()))
INPUTS = st.lists(TEXT, min_size=1, max_size=25)
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read(path: Path, fmt: str | None = None, column: str | None = None, max_rows: int = 10_000, **kw) -> list[str]:
    return read_inputs(path, fmt, column, max_rows=max_rows, **kw).inputs


def write_jsonl(path: Path, inputs: list[str], field: str, ascii_: bool, crlf: bool, blanks: bool) -> None:
    eol = "\r\n" if crlf else "\n"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        for i, s in enumerate(inputs):
            fh.write(json.dumps({"id": i, field: s, "meta": {"n": i}}, ensure_ascii=ascii_) + eol)
            if blanks and i % 3 == 0:
                fh.write(eol)


def write_csv(path: Path, inputs: list[str], column: str, lineterminator: str, quote_all: bool = False) -> None:
    # csv.writer quotes a field holding a bare "\r" only when "\r" is in its lineterminator; with
    # "\n" it would write an ambiguous file (every CSV reader splits there), so quote all then
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator=lineterminator,
                       quoting=csv.QUOTE_ALL if quote_all or lineterminator == "\n" else csv.QUOTE_MINIMAL)
        w.writerow(["id", column, "other, with \"quotes\""])
        for i, s in enumerate(inputs):
            w.writerow([i, s, f"x,{i}\n"])


@HYP
@given(inputs=INPUTS, field=st.sampled_from(["input", "text"]), ascii_=st.booleans(), crlf=st.booleans(), blanks=st.booleans())
def test_jsonl_round_trips(tmp_path: Path, inputs: list[str], field: str, ascii_: bool, crlf: bool, blanks: bool) -> None:
    path = tmp_path / "in.jsonl"
    write_jsonl(path, inputs, field, ascii_, crlf, blanks)
    got = read_inputs(path, max_rows=len(inputs))
    assert got.inputs == inputs and got.format == "jsonl" and got.column == field


@HYP
@given(inputs=INPUTS, column=st.sampled_from([None, "input", "text", "body ,\"x\""]), lt=st.sampled_from(["\r\n", "\n"]),
       quote_all=st.booleans())
def test_csv_round_trips(tmp_path: Path, inputs: list[str], column: str | None, lt: str, quote_all: bool) -> None:
    path = tmp_path / "in.csv"
    write_csv(path, inputs, column or "input", lt, quote_all)
    got = read_inputs(path, None, column, max_rows=len(inputs))
    assert got.inputs == inputs and got.column == (column or "input")


@HYP
@given(inputs=INPUTS, column=st.sampled_from([None, "text", "body"]), large=st.booleans())
def test_parquet_round_trips(tmp_path: Path, inputs: list[str], column: str | None, large: bool) -> None:
    path = tmp_path / "in.parquet"
    col = pa.array(inputs, type=pa.large_string() if large else pa.string())
    pq.write_table(pa.table({"n": list(range(len(inputs))), column or "input": col}), path, row_group_size=7)
    got = read_inputs(path, None, column, max_rows=len(inputs))
    assert got.inputs == inputs and got.column == (column or "input")


LINE = st.text(st.one_of(st.characters(codec="utf-8", exclude_characters="\n\r\ufeff"), st.sampled_from([",", '"', "\u2028", "日", "\t"])),
               min_size=1, max_size=30).filter(lambda s: bool(s.strip()))


@HYP
@given(lines=st.lists(st.one_of(LINE, st.sampled_from(["", "  ", "\t"])), min_size=1, max_size=25).filter(
    lambda ls: any(s.strip() for s in ls)), crlf=st.booleans(), final_eol=st.booleans())
def test_text_round_trips(tmp_path: Path, lines: list[str], crlf: bool, final_eol: bool) -> None:
    """One input per non-blank line; blank and whitespace-only lines are skipped."""
    path = tmp_path / "in.txt"
    eol = "\r\n" if crlf else "\n"
    path.write_bytes((eol.join(lines) + (eol if final_eol else "")).encode("utf-8"))
    want = [s for s in lines if s.strip()]
    assert read(path, max_rows=len(want)) == want


@HYP
@given(n=st.integers(2, 40), fmt=st.sampled_from(["jsonl", "csv", "parquet", "text"]))
def test_more_rows_than_the_limit_are_refused_naming_it(tmp_path: Path, n: int, fmt: str) -> None:
    inputs = [f"row {i}" for i in range(n)]
    path = tmp_path / f"in.{ {'text': 'txt'}.get(fmt, fmt) }"
    if fmt == "jsonl":
        write_jsonl(path, inputs, "input", False, False, False)
    elif fmt == "csv":
        write_csv(path, inputs, "input", "\n")
    elif fmt == "parquet":
        pq.write_table(pa.table({"input": inputs}), path)
    else:
        path.write_text("\n".join(inputs))
    assert read(path, max_rows=n) == inputs
    with pytest.raises(NodeError, match=f"more than {n - 1}.*scheduler.max_tasks_per_workflow = {n - 1}.*nothing was submitted"):
        read(path, max_rows=n - 1)


def test_a_long_file_over_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with open(path, "w") as fh:
        for i in range(200_000):
            fh.write(json.dumps({"input": f"sentence number {i}"}) + "\n")
    prog = ReadProgress()
    with pytest.raises(NodeError, match="more than 100 inputs \\(row 101 is input 101\\)"):
        read_inputs(path, max_rows=100, progress=prog)
    assert prog.rows == 100 and prog.done < path.stat().st_size // 100


def test_format_from_extension() -> None:
    assert [infer_format(Path(f"/a/b{e}")) for e in (".JSONL", ".ndjson", ".csv", ".Parquet", ".txt")] == [
        "jsonl", "jsonl", "csv", "parquet", "text"]
    assert infer_format(Path("/a/b"), "text") == "text"
    with pytest.raises(NodeError, match="extension '.xml'"):
        infer_format(Path("/a/b.xml"))
    with pytest.raises(NodeError, match="extension '\\(none\\)'"):
        infer_format(Path("/a/inputs"))
    with pytest.raises(NodeError, match="unknown format 'xml'"):
        infer_format(Path("/a/b.jsonl"), "xml")


def _w(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_bad_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _w(data / "swarm.txt", "secret\n")
    (tmp_path / "link.txt").symlink_to(data / "swarm.txt")
    os.mkfifo(tmp_path / "fifo.txt")
    (tmp_path / "dir.txt").mkdir()
    cases = [
        (Path("rel/in.txt"), "must be absolute"),
        (tmp_path / "missing.jsonl", "does not exist"),
        (tmp_path / "dir.txt", "is a directory"),
        (tmp_path / "fifo.txt", "not a regular file"),
        (data / "swarm.txt", "inside the node's data directory"),
        (tmp_path / "link.txt", "inside the node's data directory"),
        (_w(tmp_path / "in.xml", "a\n"), "extension '.xml'"),
    ]
    for path, needle in cases:
        with pytest.raises(NodeError, match=needle):
            read(path, protected=data)
    with pytest.raises(NodeError, match="only read from .csv"):
        read(_w(tmp_path / "ok.txt", "a\n"), column="input")
    if os.geteuid() != 0:  # root reads anything
        locked = _w(tmp_path / "locked.txt", "a\n")
        locked.chmod(0)
        with pytest.raises(NodeError, match="not readable"):
            read(locked)


BAD_ROWS = [
    # (file name, content, error pattern)
    ("a.jsonl", '{"input": "ok"}\n{"input": "ok"}\n{"input": "broken\n', r"row 3: not valid JSON"),
    ("b.jsonl", '{"input": "ok"}\n\n["not", "an object"]\n', r"row 3: a JSON object .* got a JSON array"),
    ("c.jsonl", '{"input": "ok"}\n{"body": "x", "id": 1}\n', r"row 2: no 'input' or 'text' field \(its fields: 'body', 'id'\)"),
    ("d.jsonl", '{"input": 12}\n', r"row 1: the 'input' field must be a string, got a JSON number"),
    ("e.jsonl", '{"input": "ok"}\n{"input": null}\n', r"row 2: the 'input' field must be a string, got null"),
    ("f.jsonl", '{"input": "ok"}\n{"input": ""}\n', r"row 2: the input is empty"),
    ("g.jsonl", '{"text": "ok"}\n{"text": " \\t "}\n', r"row 2: the input is blank"),
    ("h.jsonl", b'{"input": "ok"}\n{"input": "\xff"}\n', r"row 2: not valid UTF-8"),
    ("i.jsonl", '{"input": "\\ud800"}\n', r"row 1: .*lone surrogate"),
    ("j.jsonl", '{"input": "ok"}\n{"input": "' + "x" * 101 + '"}\n', r"row 2: the input is 101 characters; the maximum is scheduler.max_input_chars = 100"),
    ("k.csv", 'input,x\nok,1\n"unterminated,2\n', r"row 2 \(line 3\): not valid CSV"),
    ("l.csv", 'id,input\n1,ok\n2\n', r"row 2 \(line 3\): 1 field\(s\), so no 'input' column"),
    ("m.csv", 'input\nok\n""\n', r"row 2 \(line 3\): the input is empty"),
    ("n.csv", 'input\n"multi\nline"\n"  "\n', r"row 2 \(line 4\): the input is blank"),
    ("o.csv", b'input\nok\n\xc3\x28\n', r"row 2 \(line 3\): not valid UTF-8"),
    ("p.csv", 'body,id\nx,1\n', r"no 'input' or 'text' column; its columns: 'body', 'id'"),
    ("q.csv", '', r"q.csv is empty: a CSV file needs a header row"),
    ("r.csv", 'input\n', r"holds no inputs \(no rows after the header\)"),
    ("s.csv", '\ufeffinput\n\n\n', r"holds no inputs"),
    ("t.txt", '\n  \n\t\n', r"holds no inputs \(no non-blank line\)"),
    ("u.txt", b'ok\nok\n\xff\xfe\n', r"row 3: not valid UTF-8"),
    ("v.jsonl", '\n\n', r"holds no inputs"),
    ("w.txt", 'ok\n' + "y" * 101 + '\n', r"row 2: the input is 101 characters"),
]


@pytest.mark.parametrize("name,content,needle", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_rows_name_the_row(tmp_path: Path, name: str, content: str | bytes, needle: str) -> None:
    path = _w(tmp_path / name, content)
    with pytest.raises(NodeError, match=needle) as err:
        read(path, max_input_chars=100)
    assert name in str(err.value) and "nothing was submitted" in str(err.value)


def test_named_column_missing_and_bad_parquet(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="has no column 'body'; its columns: 'input', 'x'"):
        read(_w(tmp_path / "a.csv", "input,x\nok,1\n"), column="body")
    with pytest.raises(NodeError, match="row 1: no 'body' field"):
        read(_w(tmp_path / "a.jsonl", '{"input": "ok"}\n'), column="body")
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"input": ["ok", None, "x"], "n": [1, 2, 3], "t": ["a", "b", "c"]}), path)
    with pytest.raises(NodeError, match="row 2: the input is null"):
        read(path)
    with pytest.raises(NodeError, match="the column 'n' holds int64, not strings"):
        read(path, column="n")
    with pytest.raises(NodeError, match="has no column 'z'; its columns: 'input', 'n', 't'"):
        read(path, column="z")
    assert read(path, column="t") == ["a", "b", "c"]
    pq.write_table(pa.table({"input": ["ok", ""]}), path)
    with pytest.raises(NodeError, match="row 2: the input is empty"):
        read(path)
    pq.write_table(pa.table({"input": pa.array([], pa.string())}), path)
    with pytest.raises(NodeError, match="holds no inputs"):
        read(path)
    with pytest.raises(NodeError, match="not a readable Parquet file"):
        read(_w(tmp_path / "fake.parquet", "input\nok\n"))
    pq.write_table(pa.table({"input": ["a", "b", "c"]}), path)
    with pytest.raises(NodeError, match="has 3 rows, more than 2.*max_tasks_per_workflow = 2"):
        read(path, max_rows=2)


def test_parquet_without_pyarrow_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"input": ["ok"]}), path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(NodeError, match="reading .parquet needs the pyarrow package.*pip install pyarrow"):
        read(path)


def test_format_override_and_progress(tmp_path: Path) -> None:
    path = _w(tmp_path / "inputs", "a\n\nb\nc")
    prog = ReadProgress()
    got = read_inputs(path, "text", max_rows=3, progress=prog)
    assert got.inputs == ["a", "b", "c"] and got.column is None and got.bytes == 6
    assert (prog.done, prog.total, prog.rows) == (6, 6, 3)
    prog = ReadProgress()
    csvp = _w(tmp_path / "x.csv", "input\n" + "".join(f"row {i}\n" for i in range(5000)))
    assert len(read_inputs(csvp, max_rows=5000, progress=prog).inputs) == 5000
    assert prog.done == prog.total == csvp.stat().st_size and prog.rows == 5000
