"""Writing files so that a reader never sees half of one: write a temporary sibling, then rename.

`os.replace` is atomic on POSIX filesystems, so after a crash (kill -9, a full disk) the path
holds either the old content or the new, never a mix. The temporary name starts with a dot and
ends in `.tmp`, which `lumi cleanup` knows to remove if a crash leaves one behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """The SHA-256 of a file, read in chunks (token files and checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON with two-space indents and a final newline; anything not JSON-able is written as str."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
