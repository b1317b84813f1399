"""`lumi backup` (`make backup`): a verified, timestamped archive of what cannot be recomputed.

The archive `backups/lumi_backup_YYYYMMDD_HHMMSS.tar.gz` holds the configs, each dataset's
tokenizer and meta.json (not the token files, which `lumi prepare` rebuilds from the same
source), for each run (or only the runs named) its small files (config, metrics, evaluation
reports, curves) and its latest checkpoint, and the session records. Its first member,
`MANIFEST.json`, lists every file with its size and sha256.

After writing, the archive is read back and every file checked against the manifest; only then
is it renamed into place, next to `NAME.tar.gz.sha256` (the archive's own hash, in `sha256sum`
format). `lumi backup --verify ARCHIVE` repeats both checks later; a damaged archive is reported
with the member that fails and exit status 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import tarfile
import zlib
from pathlib import Path
from typing import Any

from rich.console import Console

from lumi_jax.errors import UserError
from lumi_jax.files import file_sha256
from lumi_jax.sessions.cleanup import checkpoint_steps
from lumi_jax.sessions.monitor import format_bytes

MANIFEST_NAME = "MANIFEST.json"
CHUNK_BYTES = 1 << 20


class BackupCorrupt(Exception):
    """The archive does not match its manifest or its recorded hash."""


def sha256_of(stream: Any) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def select_files(root: Path, run_names: list[str] | None = None) -> list[Path]:
    """What goes into a backup, as paths relative to `root`."""
    selected: list[Path] = []
    if (root / "config").is_dir():
        selected += [p for p in files_under(root / "config") if p.suffix == ".json"]
    data = root / "data"
    for dataset in sorted(data.iterdir()) if data.is_dir() else []:
        selected += [p for p in (dataset / "tokenizer.model", dataset / "meta.json") if p.is_file()]
    runs = root / "runs"
    available = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    for name in run_names or []:
        if name not in available:
            raise UserError(f"--runs {name}: no such run in {runs}; choose from: {', '.join(available) or '(none)'}")
    for name in run_names or available:
        run_dir = runs / name
        selected += [p for p in sorted(run_dir.iterdir()) if p.is_file()]
        steps = checkpoint_steps(run_dir / "checkpoints")
        if steps:
            selected += files_under(steps[-1][1])
    sessions = root / "sessions"
    if sessions.is_dir():
        selected += sorted(sessions.glob("*.json"))
    return [p.relative_to(root) for p in selected]


def write_archive(root: Path, files: list[Path], archive: Path) -> dict[str, Any]:
    manifest = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": {str(p): {"size": (root / p).stat().st_size, "sha256": file_sha256(root / p)} for p in files},
    }
    manifest_bytes = json.dumps(manifest, indent=2).encode()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(manifest_bytes)
        info.mtime = int(dt.datetime.now().timestamp())
        tar.addfile(info, io.BytesIO(manifest_bytes))
        for path in files:
            tar.add(root / path, arcname=str(path), recursive=False)
    return manifest


def verify_archive(archive: Path) -> dict[str, Any]:
    """Check the archive's own hash (when recorded) and every member against the manifest.

    Returns the manifest; raises BackupCorrupt naming the first problem.
    """
    sidecar = archive.with_name(archive.name + ".sha256")
    if sidecar.exists():
        expected = sidecar.read_text().split()[0]
        actual = file_sha256(archive)
        if actual != expected:
            raise BackupCorrupt(f"{archive}: sha256 {actual[:16]}… differs from {sidecar.name} ({expected[:16]}…)")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME:
                raise BackupCorrupt(f"{archive}: the first member is not {MANIFEST_NAME}")
            manifest = json.loads(tar.extractfile(first).read())
            expected_files = manifest["files"]
            seen = set()
            for member in tar:
                if member is first or not member.isfile():
                    continue
                entry = expected_files.get(member.name)
                if entry is None:
                    raise BackupCorrupt(f"{archive}: {member.name} is not in the manifest")
                digest = sha256_of(tar.extractfile(member))
                if digest != entry["sha256"] or member.size != entry["size"]:
                    raise BackupCorrupt(f"{archive}: {member.name} does not match its manifest sha256")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError, json.JSONDecodeError, KeyError) as error:
        raise BackupCorrupt(f"{archive}: unreadable ({type(error).__name__}: {error})") from None
    missing = sorted(set(expected_files) - seen)
    if missing:
        raise BackupCorrupt(f"{archive}: {len(missing)} file(s) of the manifest are missing, e.g. {missing[0]}")
    return manifest


def create_backup(root: Path, out_dir: Path, run_names: list[str] | None = None) -> tuple[Path, dict[str, Any]]:
    files = select_files(root, run_names)
    if not files:
        raise UserError(f"{root.resolve()}: nothing to back up (no config/, data/, runs/ or sessions/); "
                        "run from the project directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    archive = out_dir / f"lumi_backup_{stamp}.tar.gz"
    suffix = 2
    while archive.exists():
        archive = out_dir / f"lumi_backup_{stamp}_{suffix}.tar.gz"
        suffix += 1
    partial = archive.with_name(archive.name + ".partial")
    try:
        write_archive(root, files, partial)
        manifest = verify_archive(partial)
        digest = file_sha256(partial)
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
    archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")
    return archive, manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", metavar="NAME", help="back up only these runs (default: all)")
    parser.add_argument("--out", default="backups", help="where the archive goes (default: backups/)")
    parser.add_argument("--verify", metavar="ARCHIVE", help="check an existing archive instead of writing one")
    parser.add_argument("--root", default=".", help="the project directory (default: here)")


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.verify:
        archive = Path(args.verify)
        if not archive.is_file():
            raise UserError(f"{archive}: no such backup archive; give a path like backups/lumi_backup_*.tar.gz")
        try:
            manifest = verify_archive(archive)
        except BackupCorrupt as error:
            console.print(f"[bold red]backup damaged:[/] {error}")
            return 1
        console.print(f"[green]ok[/] {archive}: {len(manifest['files'])} files match the manifest")
        return 0
    try:
        archive, manifest = create_backup(Path(args.root), Path(args.out), args.runs)
    except BackupCorrupt as error:
        console.print(f"[bold red]backup failed its check after writing and was not kept:[/] {error}")
        return 1
    total = sum(entry["size"] for entry in manifest["files"].values())
    console.print(f"[green]backup written and verified:[/] {archive} "
                  f"({len(manifest['files'])} files, {format_bytes(total)} before compression, "
                  f"{format_bytes(archive.stat().st_size)} compressed)")
    console.print(f"check it later with: lumi backup --verify {archive}")
    return 0
