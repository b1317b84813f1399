"""Reading text files and normalising their text, the same way for every source.

Normalisation (what the tokenizer and the model see):
- UTF-8, with or without a byte-order mark (the mark is dropped);
- CRLF and lone CR become LF;
- NUL and other control characters are removed, except newline and tab;
- invalid UTF-8 is an error naming the file and the byte offset, or with errors="replace" each
  bad sequence becomes U+FFFD and is counted.
A file that looks binary (many control bytes) is refused whatever `errors` says.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from lumi_jax.errors import UserError

ERROR_MODES = ("strict", "replace")
UTF8_BOM = b"\xef\xbb\xbf"

# C0 and C1 controls and DEL, except tab (\x09) and newline (\x0a). CR is handled before this.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Bytes that text files essentially never contain (not tab, LF, FF, CR or ESC).
_BINARY_BYTES = bytes([*range(0, 9), 11, *range(14, 27), *range(28, 32), 127])
_BINARY_SNIFF_BYTES = 65536
_BINARY_FRACTION = 0.05
_BINARY_MIN_BYTES = 16


@dataclasses.dataclass
class TextStats:
    """What normalisation did, summed over files: reported by `lumi prepare`, kept in meta.json."""

    files: int = 0
    bytes_read: int = 0
    replaced_sequences: int = 0  # invalid UTF-8 sequences replaced by U+FFFD (errors="replace")
    removed_control_chars: int = 0
    had_bom: int = 0  # files that started with a byte-order mark
    had_crlf: int = 0  # files with CRLF or CR line ends

    def add(self, other: TextStats) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def check_error_mode(errors: str) -> None:
    if errors not in ERROR_MODES:
        raise UserError(f"--errors is '{errors}'; use one of: {', '.join(ERROR_MODES)}")


def looks_binary(data: bytes) -> bool:
    sample = data[:_BINARY_SNIFF_BYTES]
    if not sample:
        return False
    suspicious = len(sample) - len(sample.translate(None, _BINARY_BYTES))
    # a few stray control bytes in a short text file are noise to remove, not a sign of binary
    return suspicious >= _BINARY_MIN_BYTES and suspicious / len(sample) > _BINARY_FRACTION


def decode_utf8(data: bytes, origin: str, errors: str = "strict") -> tuple[str, TextStats]:
    """Bytes of one file -> its normalised text and what normalisation did."""
    check_error_mode(errors)
    stats = TextStats(files=1, bytes_read=len(data))
    if looks_binary(data):
        raise UserError(f"{origin}: looks like a binary file, not text; give UTF-8 text files "
                        "(.txt, .md or .jsonl)")
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
        stats.had_bom = 1
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        if errors == "strict":
            offset = error.start + 3 * stats.had_bom
            raise UserError(f"{origin}: invalid UTF-8 at byte offset {offset} ({error.reason}); "
                            "convert the file to UTF-8, or pass --errors replace to replace bad bytes") from None
        text, stats.replaced_sequences = _decode_replacing(data)
    return normalise_text(text, stats), stats


def _decode_replacing(data: bytes) -> tuple[str, int]:
    """Decode with U+FFFD for each invalid sequence, counting them (U+FFFD already in the file is not counted)."""
    text = data.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - data.count("\ufffd".encode("utf-8"))


def normalise_text(text: str, stats: TextStats | None = None) -> str:
    """Line ends to LF; control characters other than newline and tab removed."""
    if "\r" in text:
        if stats is not None:
            stats.had_crlf = 1
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if stats is not None:
        text, removed = _CONTROL_CHARS.subn("", text)
        stats.removed_control_chars += removed
        return text
    return _CONTROL_CHARS.sub("", text)


def read_text_file(path: Path, errors: str = "strict") -> tuple[str, TextStats]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror}); check its permissions") from None
    return decode_utf8(data, str(path), errors)


# Documents inside one text file: a file is cut at section breaks (two or more blank lines), and
# a section longer than MAX_DOCUMENT_CHARS is cut further at paragraph breaks. So a single book
# still gives many documents, which the train/validation split needs, and no document is so
# long that tokenising it becomes slow.
MAX_DOCUMENT_CHARS = 16_000
_SECTION_BREAK = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def split_documents(text: str) -> list[str]:
    documents: list[str] = []
    for section in _SECTION_BREAK.split(text):
        section = section.strip("\n")
        if not section.strip():
            continue
        documents.extend(_cut_long(section))
    return documents


def _cut_long(section: str) -> list[str]:
    if len(section) <= MAX_DOCUMENT_CHARS:
        return [section]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in section.split("\n\n"):
        if current and size + len(paragraph) > MAX_DOCUMENT_CHARS:
            pieces.append("\n\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        pieces.append("\n\n".join(current))
    # a single paragraph longer than the limit is cut at line ends, then anywhere
    result: list[str] = []
    for piece in pieces:
        while len(piece) > MAX_DOCUMENT_CHARS:
            cut = piece.rfind("\n", 0, MAX_DOCUMENT_CHARS)
            cut = cut if cut > 0 else MAX_DOCUMENT_CHARS
            result.append(piece[:cut])
            piece = piece[cut:].lstrip("\n")
        if piece.strip():
            result.append(piece)
    return result
