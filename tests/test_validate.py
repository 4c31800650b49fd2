"""Every validation rule rejects what it should, with its reason, and the fast reader == the careful one."""
import datetime as dt
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipelines.dedup import dedup
from data_pipelines.ingest import ingest
from data_pipelines.parse import split_records
from data_pipelines.read import Source, _careful_many, _fast_group, _open_text
from data_pipelines.store import read_quarantine

HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
GOOD = "2024-01-03,10,11,9,10.5,10.5,1000"


@pytest.mark.parametrize("row, reason", [
    ("2024-01-04,0,11,9,10.5,10.5,1000", "non-positive price"),
    ("2024-01-04,10,11,-9,10.5,10.5,1000", "non-positive price"),
    ("2024-01-04,10,11,9,10.5,0,1000", "non-positive price"),
    ("2024-01-04,10,10.2,9,10.5,10.5,1000", "high below max(open, close)"),
    ("2024-01-04,10,11,10.2,10.5,10.5,1000", "low above min(open, close)"),
    ("2024-01-04,10,11,9,10.5,10.5,-1", "negative volume"),
    ("2024-01-04,nan,11,9,10.5,10.5,1000", "NaN/inf"),
    ("2024-01-04,10,inf,9,10.5,10.5,1000", "NaN/inf"),
    ("2024-01-04,10,1e400,9,10.5,10.5,1000", "NaN/inf"),
    ("2024-01-04,10,2e9,9,10.5,10.5,1000", "huge value"),
    ("2024-01-04,10,11,9,10.5,10.5,1e20", "huge value"),
    ("0024-01-04,10,11,9,10.5,10.5,1000", "date before 1800"),
    ("2024-13-45,10,11,9,10.5,10.5,1000", "unparsable date (expected %Y-%m-%d)"),
    ("2024-01-04,10,11,9,abc,10.5,1000", "unparsable number"),
    ("2024-01-04,10,11,9,,10.5,1000", "missing value"),
    ("2024-01-04,10,11,9,10.5,10.5", "wrong number of fields (expected 7)"),
    ("2024-01-04,10,11,9,10.5,10.5,1000,7", "wrong number of fields (expected 7)"),
    ("2024-01-06,10,11,9,10.5,10.5,1000", "not a session"),      # a Saturday
    ("2024-12-25,10,11,9,10.5,10.5,1000", "not a session"),      # NYSE holiday
    (HEADER, "repeated header"),
])
def test_each_rule_quarantines_with_its_reason(tmp_path, row, reason):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "AAA.csv").write_text(f"{HEADER}\n{GOOD}\n{row}\n")
    rep = ingest(tmp_path / "in", tmp_path / "store")
    assert (rep.rows_read, rep.rows_stored, rep.rows_quarantined) == (2, 1, 1)
    q = read_quarantine(tmp_path / "store")
    assert q["reason"].to_list() == [reason]
    assert q["line"].to_list() == [3] and q["file"][0].endswith("AAA.csv")


def test_first_failing_rule_wins_and_valid_rows_pass(tmp_path):
    (tmp_path / "AAA.csv").write_text(f"{HEADER}\n{GOOD}\n2024-01-04,-1,0.5,9,10.5,10.5,-5\n")
    rep = ingest(tmp_path / "AAA.csv", tmp_path / "store")
    assert rep.reasons == {"non-positive price": 1}
    assert rep.rows_stored == 1


def test_dedup_exact_dropped_conflict_last_read_wins(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a_old.csv").write_text("Date,Open,High,Low,Close,Volume,Ticker\n2024-01-03,1,2,0.5,1.5,10,X\n"
                                 "2024-01-04,1,2,0.5,1.5,10,X\n")
    (d / "b_new.csv").write_text("Date,Open,High,Low,Close,Volume,Ticker\n2024-01-03,1,2,0.5,1.5,10,X\n"
                                 "2024-01-04,1,2,0.5,1.7,10,X\n")
    rep = ingest(d, tmp_path / "store")
    assert (rep.rows_read, rep.rows_stored, rep.duplicates, rep.conflicts) == (4, 2, 1, 1)
    q = read_quarantine(tmp_path / "store")
    assert q["reason"].to_list() == ["conflicting duplicate"] and q["file"][0].endswith("a_old.csv")
    from data_pipelines.store import read_prices
    assert read_prices(tmp_path / "store")["close"].to_list() == [1.5, 1.7]


def test_dedup_keeps_unsorted_input_sorted():
    rows = pl.DataFrame(dict(file_id=[0, 0, 0], line=[2, 3, 4], ticker=["X"] * 3,
                             date=[dt.date(2024, 1, 5), dt.date(2024, 1, 3), dt.date(2024, 1, 4)],
                             open=[1.0] * 3, high=[1.0] * 3, low=[1.0] * 3, close=[1.0] * 3,
                             adj_close=[None] * 3, volume=[1.0] * 3),
                        schema_overrides=dict(file_id=pl.UInt32, adj_close=pl.Float64))
    kept, exact, conflicts = dedup(rows)
    assert kept["date"].is_sorted() and kept.height == 3 and exact == 0 and conflicts.height == 0


# A row is a list of field texts; some are corrupted so both paths must agree on every reason.
_field = st.sampled_from(["10", "11.5", "9", "0", "-1", "abc", "", "nan", "1e400", " 10 ", "1e20"])
_date = st.sampled_from(["2024-01-02", "2024-01-03", "2024-01-06", "2024-1-4", "20240105", "Date", "x"])
_row = st.tuples(_date, _field, _field, _field, _field, _field, st.integers(5, 7))  # 8: see rules


@settings(max_examples=40, deadline=None)
@given(st.lists(_row, min_size=1, max_size=12), st.booleans())
def test_fast_reader_equals_careful_reader(rows, blank):
    lines = [",".join([d, o, h, lo, c, v, "0", "0"][:n]) for d, o, h, lo, c, v, n in rows]
    if blank:
        lines.insert(len(lines) // 2, "")
    header = "Date,Open,High,Low,Close,Volume,OpenInt"
    body = ("\n".join(lines) + "\n").encode()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "X.csv"
        path.write_bytes(header.encode() + b"\n" + body)
        text = _open_text(Source(0, path, "X"), "%Y-%m-%d")
        fast = _fast_group([text], upper=True)
        careful = _careful_many([text], upper=True)
    for a, b in zip(fast, careful):
        assert a.sort("line").equals(b.sort("line"))


def test_clean_files_never_take_the_careful_path(tmp_path, monkeypatch):
    import data_pipelines.read as rd

    for t in ("A", "B"):
        (tmp_path / f"{t}.csv").write_text(f"{HEADER}\n{GOOD}\n2024-01-04,10,11,9,10.5,10.5,1000\n")
    monkeypatch.setattr(rd, "records_to_rows", lambda *a, **k: pytest.fail("careful path used"))
    rows, bad, _ = rd.read_sources(sorted(tmp_path.glob("*.csv")))
    assert rows.height == 4 and bad.height == 0 and rows["line"].to_list() == [2, 3, 2, 3]


def test_careful_records_keep_line_numbers_of_quoted_multiline_fields():
    records = split_records('a,"b\nc",d\n\ne,f,g\n', ",", first_line=2)
    assert [(n, f) for n, _, f in records] == [(2, ["a", "b\nc", "d"]), (5, ["e", "f", "g"])]
