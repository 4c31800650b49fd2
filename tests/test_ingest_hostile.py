"""One bad file never stops a folder: each is rejected with one line, the others are stored."""
import datetime as dt
import gzip
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from data_pipelines import ingest as ing
from data_pipelines.read import read_sources
from data_pipelines.store import read_manifest

YAHOO = "Date,Open,High,Low,Close,Adj Close,Volume\n"
ROWS = "2024-01-02,10,11,9,10.5,10.5,1000\n2024-01-03,10,11,9,10.5,10.5,1000\n"
_rng = random.Random(0)
NOISE = bytes(_rng.randrange(256) for _ in range(5000))

# name -> the one line the summary gives it (None: stored, nothing rejected)
REJECTED = {
    "BIN.csv": "not a text table",
    "TRUNC.csv.gz": "truncated or corrupt gzip (Compressed file ended before the end-of-stream marker was reached)",
    "WRONG.parquet": "unknown columns: missing date, open, high, low, close, volume in header 'symbol,px,when'",
    "CORRUPT.parquet": "unreadable Parquet",
    "EMPTY.csv": "empty file",
    "LOOP.csv": "a symbolic link loop",
    "BROKEN.csv": "a broken symbolic link",
    "ALLNUL.csv": "not a text table",
    "HEADER.csv": "header only, no data rows",
    "XLSX.csv": "not a text table (a zip or Excel file?)",
}
STORED = {"GOOD", "GZ", "LATIN1", "NUL", "UTF16", "MAC", "HUGELINE"}  # text a vendor might send


MAKERS = {  # name -> how to make it in folder d
    "GZ.csv.gz": lambda d: (d / "GZ.csv.gz").write_bytes(gzip.compress((YAHOO + ROWS).encode())),
    "BIN.csv": lambda d: (d / "BIN.csv").write_bytes(NOISE),
    "TRUNC.csv.gz": lambda d: (d / "TRUNC.csv.gz").write_bytes(gzip.compress((YAHOO + ROWS * 50).encode())[:60]),
    "WRONG.parquet": lambda d: pl.DataFrame({"symbol": ["A"], "px": [1.0], "when": [dt.date(2024, 1, 2)]})
    .write_parquet(d / "WRONG.parquet"),
    "CORRUPT.parquet": lambda d: (d / "CORRUPT.parquet").write_bytes(b"PAR1" + NOISE[:300]),
    "EMPTY.csv": lambda d: (d / "EMPTY.csv").write_bytes(b""),
    "X.csv": lambda d: (d / "X.csv").mkdir(),                         # a folder named like a data file
    "LOOP.csv": lambda d: os.symlink("LOOP.csv", d / "LOOP.csv"),
    "BROKEN.csv": lambda d: os.symlink("nowhere.csv", d / "BROKEN.csv"),
    "up": lambda d: ((d / "sub").mkdir(), os.symlink("..", d / "sub" / "up")),   # a cycle of folders
    "NUL.csv": lambda d: (d / "NUL.csv").write_bytes((YAHOO + ROWS).encode() + b"\x00" * 4096),  # crash padding
    "ALLNUL.csv": lambda d: (d / "ALLNUL.csv").write_bytes(b"\x00" * 4096),
    "HEADER.csv": lambda d: (d / "HEADER.csv").write_text(YAHOO),
    "LATIN1.csv": lambda d: (d / "LATIN1.csv").write_bytes(
        (YAHOO + ROWS).encode() + "2024-01-04,10,11,9,10\xe9,10.5,1000\n".encode("latin-1")),
    "UTF16.csv": lambda d: (d / "UTF16.csv").write_bytes((YAHOO + ROWS).encode("utf-16")),
    "MAC.csv": lambda d: (d / "MAC.csv").write_bytes((YAHOO + ROWS).replace("\n", "\r").encode()),
    "XLSX.csv": lambda d: (d / "XLSX.csv").write_bytes(b"PK\x03\x04" + bytes(200)),
    "HUGELINE.csv": lambda d: (d / "HUGELINE.csv").write_text(YAHOO + ROWS + '"' + "x" * 200_000 + "\n"),
}
SKIPPED = {"X.csv": "a folder named like a data file (the files in it are read)",
           "up": "a link to a folder read already"}
QUARANTINED = {"LATIN1.csv": "non-UTF-8 bytes", "NUL.csv": "wrong number of fields (expected 7)",
               "WRONG.parquet": "unknown columns", "HUGELINE.csv": "wrong number of fields (expected 7)"}


def hostile_folder(d: Path, names=tuple(MAKERS)) -> Path:
    d.mkdir()
    (d / "GOOD.csv").write_text(YAHOO + ROWS)
    for name in names:
        MAKERS[name](d)
    return d


def head_counts(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split())}


def test_each_hostile_file_gets_one_line_and_the_rest_is_stored(tmp_path, capsys):
    d = hostile_folder(tmp_path / "drop")
    assert ing.run(OmegaConf.create(dict(path=str(d), store=str(tmp_path / "s")))) == 0
    out = capsys.readouterr().out.splitlines()
    n = head_counts(out[0])
    assert n["rows_read"] == n["rows_stored"] + n["rows_quarantined"] + n["duplicates"]
    assert set(read_manifest(tmp_path / "s")["ticker"]) == STORED
    for name, why in REJECTED.items():
        mine = [ln for ln in out if f"/{name}" in ln and "file rejected" in ln]
        assert len(mine) == 1 and mine[0].startswith(f"  file rejected: {d / name}: {why}"), (name, mine)
    assert f"  file skipped: {d / 'X.csv'}: {SKIPPED['X.csv']}" in out
    assert f"  file skipped: {d / 'sub' / 'up'}: {SKIPPED['up']}" in out


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_one_good_file_and_one_hostile_file(tmp_path, capsys, name):
    d = hostile_folder(tmp_path / "drop", [name])
    assert ing.run(OmegaConf.create(dict(path=str(d), store=str(tmp_path / "s")))) == 0
    out = capsys.readouterr().out.splitlines()
    n = head_counts(out[0])
    assert n["rows_read"] == n["rows_stored"] + n["rows_quarantined"] + n["duplicates"]
    assert "GOOD" in read_manifest(tmp_path / "s")["ticker"].to_list()
    about = [ln for ln in out[1:] if name in ln and ln.startswith("  file ")]   # reasons are counted apart
    assert len(about) == (name in REJECTED or name in SKIPPED), about
    if name in QUARANTINED:
        assert any(ln.startswith(f"  quarantined {n['rows_quarantined']}: {QUARANTINED[name]}") for ln in out)
    elif name not in REJECTED:
        assert n["rows_quarantined"] == 0 and n["rows_stored"] == 2 + 2 * (name.split(".")[0] in STORED)


def test_the_command_line_exits_0_without_a_traceback(tmp_path):
    d = hostile_folder(tmp_path / "drop")
    proc = subprocess.run([sys.executable, "-m", "forecast", "ingest", f"path={d}", f"store={tmp_path / 's'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"file rejected: {d / 'BIN.csv'}: not a text table" in proc.stdout


def test_only_bad_files_exit_1(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "BIN.csv").write_bytes(NOISE)
    (d / "EMPTY.csv").write_bytes(b"")
    assert ing.run(OmegaConf.create(dict(path=str(d), store=str(tmp_path / "s")))) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file: simulated in the next test")
def test_permission_denied_is_one_line(tmp_path):
    d = tmp_path / "drop"
    d.mkdir()
    (d / "GOOD.csv").write_text(YAHOO + ROWS)
    (d / "SECRET.csv").write_text(YAHOO + ROWS)
    (d / "SECRET.csv").chmod(0)
    rep = ing.ingest(d, tmp_path / "s")
    assert rep.rejected_files == {str(d / "SECRET.csv"): "cannot read (Permission denied)"} and rep.rows_stored == 2


def test_permission_denied_simulated(tmp_path, monkeypatch):
    d = tmp_path / "drop"
    d.mkdir()
    (d / "GOOD.csv").write_text(YAHOO + ROWS)
    (d / "SECRET.csv").write_text(YAHOO + ROWS)
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "SECRET.csv":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    rep = ing.ingest(d, tmp_path / "s")
    assert rep.rejected_files == {str(d / "SECRET.csv"): "cannot read (Permission denied)"} and rep.rows_stored == 2


def test_a_link_loop_as_the_path_is_an_error(tmp_path):
    os.symlink("L.csv", tmp_path / "L.csv")
    with pytest.raises(ing.st.StoreError, match="broken symbolic link or a link loop"):
        ing.ingest(tmp_path / "L.csv", tmp_path / "s")


_text = st.lists(st.sampled_from(["2024-01-02", "10", "1e400", ",", ";", "\t", '"', "\n", "\r", "\x00", "\xe9",
                                  "Date", "Open,High,Low,Close,Volume", "\ufeff", " "]), max_size=40)


def _read_one(name: str, data: bytes) -> None:
    """The reader returns (never raises) for any bytes; a file it cannot take has a problem line."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        rows, bad, (src,) = read_sources([path])
        assert src.problem is None or (isinstance(src.problem, str) and "\n" not in src.problem)
        assert rows.height + bad.height >= 0 and set(bad["file_id"].to_list()) <= {0}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.sampled_from(["R.csv", "R.csv.gz", "R.parquet", "R.txt"]))
def test_random_bytes_never_stop_the_reader(data, name):
    _read_one(name, data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_text, st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_random_text_never_stops_the_reader(parts, encoding):
    text = "Date,Open,High,Low,Close,Volume\n" + "".join(parts)
    _read_one("T.csv", text.encode(encoding, errors="replace"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_next_to_a_good_file_keep_the_sums(data):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in"
        src.mkdir()
        (src / "GOOD.csv").write_text(YAHOO + ROWS)
        (src / "R.csv").write_bytes(data)
        rep = ing.ingest(src, Path(d) / "s")
        assert rep.rows_read == rep.rows_stored + rep.rows_quarantined + rep.duplicates
        assert "GOOD" in read_manifest(Path(d) / "s")["ticker"].to_list()
