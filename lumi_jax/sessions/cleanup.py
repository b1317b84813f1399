"""`lumi cleanup` (`make session-cleanup`): free disk space without losing work.

By default it removes only what nobody needs: temporary files left by interrupted jobs (a half
prepared dataset, a half-written checkpoint, a partial backup) and session logs older than N
days (default 7). Session records (the small .json files) stay, because `session-status` and
comparisons read them. Checkpoints and datasets are never touched unless a flag asks:
`--checkpoints` keeps only the latest checkpoint of each run; `--data NAME` removes the named
dataset. It lists everything it removes; `--dry-run` lists and removes nothing.

Temporary files younger than an hour are left alone, and it says so: a running job may still be
writing them. `--checkpoints` first restores each run's newest checkpoint (checksums and values):
only the checkpoints older than the newest one that restores are removed, and a run another
process is writing (its RUN/.lock is held) is left alone.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from lumi_jax.errors import UserError
from lumi_jax.sessions.monitor import format_bytes
from lumi_jax.tables import print_table

DAY_S = 24 * 3600
TEMPORARY_MIN_AGE_S = 3600
# Names that interrupted jobs leave behind: Orbax's unfinished saves, our own temporary
# directories (prepare and backup write into one and rename it when done), editors' swap files.
# `lumi prepare` writes `.NAME.partial-PID` and moves a replaced dataset to `.NAME.replaced-PID`.
TEMPORARY_PATTERNS = ("*.orbax-checkpoint-tmp*", "*.tmp", "*.tmp-*", ".tmp*", "*.partial",
                      ".*.partial-*", ".*.replaced-*")
TEMPORARY_ROOTS = ("data", "runs", "sessions", "backups")


@dataclass
class Removal:
    path: Path
    kind: str  # "temporary", "session log", "old checkpoint", "dataset"
    size_bytes: int
    age_s: float


def tree_size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())


def age_s(path: Path, now: float) -> float:
    return now - path.lstat().st_mtime


def is_temporary(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in TEMPORARY_PATTERNS)


def owner_is_running(path: Path) -> bool:
    """For names ending in -PID (prepare's partial directories): is that process still alive?"""
    pid = path.name.rsplit("-", 1)[-1]
    return pid.isdigit() and path.name.startswith(".") and psutil.pid_exists(int(pid))


def find_temporary(root: Path, now: float, notes: list[str] | None = None) -> list[Removal]:
    found = []
    candidates = [root / ".tmp"] if (root / ".tmp").exists() else []
    for top in TEMPORARY_ROOTS:
        if (root / top).is_dir():
            # Walk without descending into what we will remove anyway.
            stack = [root / top]
            while stack:
                directory = stack.pop()
                for entry in sorted(directory.iterdir()):
                    if is_temporary(entry.name):
                        candidates.append(entry)
                    elif entry.is_dir() and not entry.is_symlink():
                        stack.append(entry)
    young, running = [], []
    for path in candidates:
        if owner_is_running(path):
            running.append(path)
        elif age_s(path, now) < TEMPORARY_MIN_AGE_S:
            young.append(path)
        else:
            found.append(Removal(path, "temporary", tree_size(path), age_s(path, now)))
    if notes is not None and young:
        notes.append(f"left {len(young)} temporary item(s) younger than an hour, which a running job may still be "
                     f"writing: {', '.join(display(p, root) for p in young)}; run cleanup again later to remove them")
    if notes is not None and running:
        notes.append(f"left {len(running)} temporary item(s) whose job is still running: "
                     f"{', '.join(display(p, root) for p in running)}")
    return found


def display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def find_old_logs(root: Path, days: float, now: float) -> list[Removal]:
    sessions = root / "sessions"
    if not sessions.is_dir():
        return []
    return [Removal(log, "session log", log.stat().st_size, age_s(log, now))
            for log in sorted(sessions.glob("*.log")) if age_s(log, now) > days * DAY_S]


def checkpoint_steps(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints (directories named by their step), oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    steps = [(int(p.name), p) for p in checkpoints_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(steps)


def newest_restorable(run_dir: Path, steps: list[int]) -> tuple[int | None, list[str]]:
    """The newest step of a run that restores (its checksums and values check out), and why the
    newer ones did not. None when none does, or the run cannot be read at all."""
    from lumi_jax.runs import load_run  # JAX: loaded only when --checkpoints asks for it

    problems = []
    for step in reversed(steps):
        try:
            load_run(run_dir, step=step)
            return step, problems
        except UserError as error:
            problems.append(f"step {step}: {error}")
            if "damaged" not in str(error) and "no readable checkpoint" not in str(error):
                return None, problems  # not about this step (the run itself is unreadable): stop
    return None, problems


def find_old_checkpoints(root: Path, now: float, notes: list[str] | None = None) -> list[Removal]:
    """Every checkpoint older than the newest one that restores; a run being written is skipped."""
    from lumi_jax.run_lock import RunLock

    found = []
    notes = [] if notes is None else notes
    runs = root / "runs"
    for checkpoints_dir in sorted(runs.glob("*/checkpoints")) if runs.is_dir() else []:
        run_dir = checkpoints_dir.parent
        steps = checkpoint_steps(checkpoints_dir)
        if len(steps) < 2:
            continue
        try:
            lock = RunLock(run_dir, command="lumi cleanup --checkpoints").acquire()
        except UserError as error:
            notes.append(f"left the checkpoints of {display(run_dir, root)} alone: {error}")
            continue
        try:
            good, problems = newest_restorable(run_dir, [step for step, _ in steps])
        finally:
            lock.release()
        if good is None:
            notes.append(f"kept every checkpoint of {display(run_dir, root)}: none of them restores "
                         f"({problems[-1] if problems else 'unknown'})")
            continue
        if problems:
            notes.append(f"{display(run_dir, root)}: the newest checkpoint that restores is step {good}; "
                         f"the newer ones are damaged and were left in place ({'; '.join(problems)})")
        for step, path in steps:
            if step < good:  # the newest good one, and anything newer, stays
                found.append(Removal(path, "old checkpoint", tree_size(path), age_s(path, now)))
    return found


def find_datasets(root: Path, names: list[str], now: float) -> list[Removal]:
    found = []
    for name in names:
        path = root / "data" / name
        if "/" in name or name in ("", ".", "..") or not path.is_dir():
            known = sorted(p.name for p in (root / "data").iterdir() if p.is_dir()) if (root / "data").is_dir() else []
            raise UserError(f"--data {name}: no such dataset in {root / 'data'}; "
                            f"choose one of: {', '.join(known) or '(none)'}")
        found.append(Removal(path, "dataset", tree_size(path), age_s(path, now)))
    return found


def plan_cleanup(root: Path, days: float = 7, checkpoints: bool = False,
                 datasets: list[str] | None = None, notes: list[str] | None = None) -> list[Removal]:
    """What to remove; `notes` collects what was left alone, and why."""
    now = time.time()
    removals = find_temporary(root, now, notes) + find_old_logs(root, days, now)
    if checkpoints:
        removals += find_old_checkpoints(root, now, notes)
    if datasets:
        removals += find_datasets(root, datasets, now)
    return removals


def remove(removals: list[Removal]) -> None:
    for removal in removals:
        if removal.path.is_dir() and not removal.path.is_symlink():
            shutil.rmtree(removal.path)
        else:
            removal.path.unlink(missing_ok=True)


def removals_table(removals: list[Removal], root: Path, dry_run: bool) -> Table:
    verb = "would remove" if dry_run else "removed"
    total = sum(r.size_bytes for r in removals)
    table = Table(title=f"cleanup: {verb} {len(removals)} item(s), {format_bytes(total)}", title_justify="left")
    for column in ("path", "kind", "size", "age"):
        table.add_column(column, justify="right" if column in ("size", "age") else "left")
    for removal in removals:
        table.add_row(str(removal.path.relative_to(root)), removal.kind, format_bytes(removal.size_bytes),
                      f"{removal.age_s / DAY_S:.1f} d")
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=float, default=7.0, help="remove session logs older than this (default 7)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument("--checkpoints", action="store_true",
                        help="also remove every checkpoint but the latest of each run")
    parser.add_argument("--data", nargs="+", metavar="NAME", default=[],
                        help="also remove these datasets (directories under data/)")
    parser.add_argument("--root", default=".", help="the project directory (default: here)")


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.days) or args.days < 0:
        raise UserError(f"--days {args.days:g}: use zero or more days, e.g. --days 7")
    root = Path(args.root)
    if not root.is_dir():
        raise UserError(f"--root {root}: no such directory; run from the project directory")
    notes: list[str] = []
    removals = plan_cleanup(root, args.days, args.checkpoints, args.data, notes)
    console = Console()
    for note in notes:
        console.print(note, highlight=False, markup=False)
    if not removals:
        console.print("cleanup: nothing to remove "
                      f"(no temporary files, no session logs older than {args.days:g} days).")
        return 0
    if not args.dry_run:
        remove(removals)
    print_table(console, removals_table(removals, root, args.dry_run))
    if not args.checkpoints and not args.data:
        console.print("[dim]checkpoints and datasets were left alone "
                      "(--checkpoints / --data NAME remove them)[/]")
    return 0
