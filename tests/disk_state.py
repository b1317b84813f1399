"""What is on disk, as one hash: a refused command must leave it as it was."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path


def _digest(roots: tuple[Path, ...], file_part: Callable[[Path], bytes]) -> str:
    """Every path under the roots, a symlink by its target and a file by `file_part`."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(file_part(path))
    return digest.hexdigest()


def tree_hash(*roots: Path) -> str:
    """Every path under the roots, with its bytes (a symlink by its target)."""
    return _digest(roots, lambda path: hashlib.sha256(path.read_bytes()).digest())


def tree_stamp(*roots: Path) -> str:
    """Every path under the roots, with its size and modification time (a symlink by its target).

    For directories a test does not own, such as the repository's runs/ and data/, which after
    a few sessions hold gigabytes: reading all of it twice per case made the bad-input catalogue
    take minutes. Writing to a file, creating or removing one, changes this stamp as surely as
    its bytes; only a write that also puts the old modification time back would escape it."""
    def size_and_time(path: Path) -> bytes:
        info = path.stat()
        return f"{info.st_size}:{info.st_mtime_ns}\0".encode()

    return _digest(roots, size_and_time)
