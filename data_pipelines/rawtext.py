"""The bytes of a vendor file as text to parse, or why it is not a text table.

Gzip is recognised by its magic bytes, whatever the name says. UTF-16 (Excel's "Unicode text") is
re-encoded as UTF-8 and old Mac line ends (CR only) become LF, so both readers see UTF-8 lines. A
file is "not a text table" when its header line holds control bytes or NULs, or more than 5% of its
first 64 KiB are control bytes other than NUL; NULs after the header (a file padded by a crash) are
left to the row rules, so the good rows of such a file are kept.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from pathlib import Path

from data_pipelines.formats import UnreadableFile

_GZIP = b"\x1f\x8b"
_BOMS16 = (b"\xff\xfe", b"\xfe\xff")
_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")           # anything but tab and LF
_CONTROL_NOT_NUL_BYTES = bytes([*range(1, 9), 11, 12, *range(14, 32), 127])  # deleted by bytes.translate
_MAGIC = {b"PK\x03\x04": " (a zip or Excel file?)", b"PAR1": " (a Parquet file? name it .parquet)",
          b"%PDF": " (a PDF file?)"}


def file_bytes(path: Path) -> tuple[bytes, bool]:
    """(the text bytes to parse, whether they are exactly the bytes on disk). UnreadableFile when the
    file cannot be read or is a truncated or corrupt gzip."""
    return as_text(raw_bytes(path), path.name)


def raw_bytes(path: Path) -> bytes:
    """The bytes on disk; UnreadableFile when they cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise UnreadableFile(f"cannot read ({e.strerror or e})") from None


def digest(raw: bytes) -> str:
    """The hash the source catalogue keeps of a file's bytes on disk (catalogue.py)."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def as_text(raw: bytes, name: str) -> tuple[bytes, bool]:
    """`file_bytes` of bytes already read from a file called `name`."""
    data = raw
    if raw[:2] == _GZIP:
        try:
            data = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise UnreadableFile(f"truncated or corrupt gzip ({e})") from None
    data = _as_utf8_lines(data)
    return data, data is raw and not name.lower().endswith(".gz")


def _as_utf8_lines(data: bytes) -> bytes:
    """UTF-16 re-encoded as UTF-8, CR-only line ends made LF; `data` itself when nothing changed."""
    head = data[:2048]
    if head[:2] in _BOMS16 or _utf16_without_bom(head):
        enc = "utf-16" if head[:2] in _BOMS16 else "utf-16-le" if head[1:2] == b"\x00" else "utf-16-be"
        data = data.decode(enc, errors="replace").encode()
    if b"\r" in data[:65536] and b"\n" not in data[:65536]:
        data = data.replace(b"\r", b"\n")
    return data


def _utf16_without_bom(head: bytes) -> bool:
    """Most even (or most odd) bytes NUL, almost none of the others: ASCII text written as UTF-16."""
    if len(head) < 16 or b"\x00" not in head:
        return False
    even, odd = head[0::2].count(0) / len(head[0::2]), head[1::2].count(0) / len(head[1::2])
    return max(even, odd) > 0.9 and min(even, odd) < 0.05


def check_text(data: bytes, header: bytes) -> None:
    """UnreadableFile('not a text table') unless `header` (the first non-blank line, without its
    line end) is text and the start of `data` is mostly text."""
    sample = data[:65536]
    controls = len(sample) - len(sample.translate(None, _CONTROL_NOT_NUL_BYTES))
    if _CONTROL.search(header) or controls > 0.05 * len(sample):
        hint = next((h for m, h in _MAGIC.items() if data.startswith(m)), "")
        raise UnreadableFile(f"not a text table{hint}")


def unexpected(e: Exception) -> str:
    """A file-level problem line for an error no rule foresaw."""
    return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
