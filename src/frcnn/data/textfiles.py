"""Text files as editors write them: UTF-8 with or without a byte-order mark (Windows tools write
one), UTF-16 with one (Windows PowerShell's ``>``), any line ends, blank lines and tabs."""
from __future__ import annotations

import codecs
from pathlib import Path

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_text(path: str | Path) -> str:
    """The text of a file: UTF-16 where it starts with a UTF-16 byte-order mark, else UTF-8, the
    mark left out either way. Line ends stay as written (``str.splitlines`` takes \\n, \\r\\n and
    \\r alike). Raises OSError or UnicodeDecodeError as reading and decoding do."""
    data = Path(path).read_bytes()
    return data.decode("utf-16" if data.startswith(_UTF16_BOMS) else "utf-8-sig")


def text_lines(path: str | Path) -> list[str]:
    """The non-blank lines of ``read_text(path)``, without surrounding whitespace (spaces, tabs,
    a CRLF's \\r)."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]
