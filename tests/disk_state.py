"""What is on disk, as one hash: a refused command must leave it as it was."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_hash(*roots: Path) -> str:
    """Every path under the roots, with its bytes (a symlink by its target)."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
