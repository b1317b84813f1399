"""`lumi check-env` (`make check-env`): is this machine ready to run lumi_jax?

Python and package versions against the ranges in pyproject.toml, the devices JAX sees, memory,
disk and write permissions. Each check says ok, warn or FAIL, and a failing one says how to fix
it; the command exits with status 1 when anything needed is missing. Sessions run the same
checks as their first step.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from packaging.requirements import InvalidRequirement, Requirement
from rich.console import Console
from rich.table import Table

from lumi_jax.config import REPO_ROOT
from lumi_jax.sessions.monitor import GIB, format_bytes, nvidia_smi_memory
from lumi_jax.tables import print_table

MIN_PYTHON = (3, 11)
# Thresholds for disk and memory: below WARN a session may run short, below FAIL it cannot run.
DISK_WARN_BYTES = 5 * GIB
DISK_FAIL_BYTES = GIB // 2
MEMORY_WARN_BYTES = 2 * GIB
PROJECT_DIRS = ("data", "runs", "sessions")
FIX_INSTALL = "run `make install` (or `.venv/bin/pip install -e '.[dev]'`)"


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str
    fix: str = ""


def core_requirements() -> list[Requirement]:
    """The core dependencies, from pyproject.toml when run from the repository, else the install."""
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.exists():
        texts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    else:
        texts = importlib.metadata.requires("lumi-jax") or []
    requirements = []
    for text in texts:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is None:  # extras (dev, tfds) are optional
            requirements.append(requirement)
    return requirements


def package_versions(names: list[str] | None = None) -> dict[str, str | None]:
    """Installed versions of the core packages (and jaxlib), None where one is missing."""
    names = names or [r.name for r in core_requirements()] + ["jaxlib"]
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("python", "FAIL", version,
                     "lumi_jax needs Python >= 3.11; run make with PYTHON_SYSTEM=python3.11")
    return Check("python", "ok", f"{version} ({sys.executable})")


def check_packages() -> list[Check]:
    checks = []
    for requirement in core_requirements():
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(requirement.name, "FAIL", "not installed", FIX_INSTALL))
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            checks.append(Check(requirement.name, "FAIL",
                                f"{version} is outside {requirement.specifier}", FIX_INSTALL))
        else:
            checks.append(Check(requirement.name, "ok", version))
    return checks


def check_devices() -> list[Check]:
    try:
        import jax
        import jax.numpy as jnp

        devices = jax.devices()
        float(jnp.ones(4).sum())  # the backend really computes, not only imports
    except Exception as error:  # any failure here means JAX cannot run: report it, do not crash
        return [Check("jax devices", "FAIL", f"{type(error).__name__}: {error}", FIX_INSTALL)]
    kinds = Counter(f"{device.platform} ({device.device_kind})" for device in devices)
    detail = ", ".join(f"{count} × {kind}" for kind, count in kinds.items())
    checks = [Check("jax devices", "ok", f"{detail}; default backend {jax.default_backend()}")]
    if jax.default_backend() == "cpu" and nvidia_smi_memory():
        checks.append(Check(
            "gpu", "warn", "nvidia-smi sees a GPU but JAX runs on the CPU",
            "install the CUDA build of JAX: `.venv/bin/pip install -U 'jax[cuda12]'`",
        ))
    return checks


def check_memory() -> Check:
    memory = psutil.virtual_memory()
    detail = f"{format_bytes(memory.available)} available of {format_bytes(memory.total)}"
    if memory.available < MEMORY_WARN_BYTES:
        return Check("memory", "warn", detail, "close other programs; sessions use micro/tiny models first")
    return Check("memory", "ok", detail)


def check_disk(root: Path) -> Check:
    free = shutil.disk_usage(root).free
    detail = f"{format_bytes(free)} free at {root.resolve()}"
    if free < DISK_FAIL_BYTES:
        return Check("disk", "FAIL", detail, "free disk space; `make session-cleanup` removes old logs and temporary files")
    if free < DISK_WARN_BYTES:
        return Check("disk", "warn", detail, "checkpoints of the small model take ~0.5 GB each; free some space")
    return Check("disk", "ok", detail)


def check_writable(root: Path) -> list[Check]:
    checks = []
    for name in PROJECT_DIRS:
        target = root / name
        existing = target
        while not existing.exists():  # a missing directory is fine if it can be created
            existing = existing.parent
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            checks.append(Check(f"write {name}/", "FAIL", f"cannot write in {existing}: {error.strerror}",
                                f"run from a directory you can write to, or fix the permissions of {existing}"))
            continue
        checks.append(Check(f"write {name}/", "ok", "exists" if target.exists() else f"will be created in {existing}"))
    return checks


def run_checks(root: Path = Path(".")) -> list[Check]:
    return [check_python(), *check_packages(), *check_devices(), check_memory(), check_disk(root),
            *check_writable(root)]


def checks_table(checks: list[Check]) -> Table:
    table = Table(title="Environment", title_justify="left")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column)
    styles = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}
    for check in checks:
        table.add_row(check.name, f"[{styles[check.status]}]{check.status}[/]", check.detail, check.fix)
    return table


def failures(checks: list[Check]) -> list[Check]:
    return [check for check in checks if check.status == "FAIL"]


def as_records(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")


def run(args: argparse.Namespace) -> int:
    checks = run_checks(Path(os.getcwd()))
    if args.json:
        import json

        print(json.dumps(as_records(checks), indent=2))
    else:
        console = Console()
        print_table(console, checks_table(checks))
        failed = failures(checks)
        if failed:
            console.print(f"[bold red]{len(failed)} check(s) failed:[/] " +
                          "; ".join(f"{c.name}: {c.fix}" for c in failed))
        else:
            console.print("[green]Ready.[/] Next: `make session-quick`.")
    return 1 if failures(checks) else 0
