"""The session runner: steps, a shared time budget, a log and a record.

A session is a list of `Step`s run in order in one process. Each step has a planned share of the
session's budget; when it starts it is *given* its share of whatever time is left, so time saved
by a quick step flows to the later ones and an overrun shrinks them. Training steps pass the time
they are given to the trainer as its wall-clock budget; the trainer stops and saves at it.

Everything shown goes to `sessions/YYYYMMDD_HHMMSS.log` (see transcript.py), and the record
`sessions/YYYYMMDD_HHMMSS.json` is rewritten after every step, so even a killed session leaves
a record saying how far it got. The first step that fails ends the session: the rest are marked
skipped, the record names the step and the error, and the exit status is non-zero (2 for a user
mistake, with its one-line message last; 1 for anything else; 130 for Ctrl-C).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from lumi_jax.config import REPO_ROOT
from lumi_jax.errors import USER_ERROR_EXIT_STATUS, UserError
from lumi_jax.sessions.env_check import package_versions
from lumi_jax.sessions.monitor import PeakTracker, format_bytes
from lumi_jax.sessions.transcript import Transcript
from lumi_jax.tables import print_table

RECORD_FORMAT_VERSION = 1
SESSIONS_DIR = Path("sessions")
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


class StepFailed(Exception):
    """A step ran but its result is not acceptable (for example, the loss did not fall)."""


@dataclass
class StepContext:
    """What a step sees: the session, its given time, and a place for its metrics."""

    session: SessionRunner
    given_s: float
    started_monotonic: float
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def console(self) -> Console:
        return self.session.console

    @property
    def state(self) -> dict[str, Any]:
        """Values steps hand to later steps (the data directory, the run directory, ...)."""
        return self.session.state

    def time_left_s(self) -> float:
        return self.given_s - (time.monotonic() - self.started_monotonic)


@dataclass
class Step:
    name: str
    run: Callable[[StepContext], None]
    share: float  # relative weight in the session budget
    description: str = ""


@dataclass
class StepRecord:
    name: str
    description: str
    status: str = "pending"  # pending, running, passed, failed, skipped, interrupted
    planned_s: float = 0.0
    given_s: float | None = None
    duration_s: float | None = None
    started_at: str | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def git_revision(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit and whether the working tree has uncommitted changes; None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def new_session_paths(sessions_dir: Path) -> tuple[Path, Path]:
    """sessions/YYYYMMDD_HHMMSS.{log,json}; a suffix keeps two sessions in one second apart."""
    sessions_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    for attempt in range(1, 1000):
        stem = stamp if attempt == 1 else f"{stamp}_{attempt}"
        log, record = sessions_dir / f"{stem}.log", sessions_dir / f"{stem}.json"
        if log.exists():
            continue
        try:
            record.open("x").close()  # exclusive creation reserves the name, even across processes
        except FileExistsError:
            continue
        return log, record
    raise RuntimeError(f"cannot find a free session name in {sessions_dir}")


def write_json_atomically(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


class SessionRunner:
    """Runs one session's steps under a budget, with a log and a record."""

    def __init__(self, name: str, budget_s: float, arguments: dict[str, Any], *, seed: int,
                 command: list[str] | None = None, sessions_dir: Path = SESSIONS_DIR,
                 console: Console | None = None) -> None:
        self.name = name
        self.budget_s = budget_s
        self.arguments = arguments
        self.seed = seed
        self.sessions_dir = Path(sessions_dir)
        self.console = console or Console()
        self.state: dict[str, Any] = {}
        self.log_path, self.record_path = new_session_paths(self.sessions_dir)
        self.record: dict[str, Any] = {
            "format_version": RECORD_FORMAT_VERSION,
            "session": name,
            "arguments": arguments,
            "command": " ".join(command or sys.argv),
            "status": "running",
            "started_at": now_iso(),
            "ended_at": None,
            "budget_s": budget_s,
            "elapsed_s": None,
            "failed_step": None,
            "error": None,
            "user_error": False,
            "pid": os.getpid(),
            "steps": [],
            "metrics": {},
            "peak_resources": None,
            "config_hash": None,
            "seed": seed,
            "git": git_revision(),
            "package_versions": package_versions(),
            "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                     "cpu_count": os.cpu_count()},
            "devices": None,
            "reproducibility": None,
            "outputs": {},
            "log": str(self.log_path),
        }
        self._save()  # the reserved record is valid JSON from the start

    # Steps may fill these in as they learn them.
    def set_config_hash(self, value: str) -> None:
        self.record["config_hash"] = value

    def set_output(self, name: str, path: Path | str) -> None:
        self.record["outputs"][name] = str(path)

    def set_reproducibility(self, check: dict[str, Any]) -> None:
        self.record["reproducibility"] = check

    def peak_so_far(self) -> dict[str, Any]:
        """Peak resources up to now (a step can compare them with an estimate)."""
        return self._tracker.summary()

    def run(self, steps: list[Step]) -> int:
        with Transcript(self.log_path) as transcript, PeakTracker() as tracker:
            self._tracker = tracker
            status = self._run_steps(steps, transcript)
            self.record["peak_resources"] = tracker.summary()
            self.record["devices"] = _jax_devices()
            self.record["ended_at"] = now_iso()
            self._save()
            self._print_summary()
            if status == EXIT_FAILED and self.record.get("user_error"):
                # The one clear line for a user mistake comes last, where the eye lands.
                print(f"error: {' '.join(str(self.record['error']).split())}", file=sys.stderr)
                status = USER_ERROR_EXIT_STATUS
        return status

    def _run_steps(self, steps: list[Step], transcript: Transcript) -> int:
        total_share = sum(step.share for step in steps) or 1.0
        records = [StepRecord(step.name, step.description,
                              planned_s=self.budget_s * step.share / total_share) for step in steps]
        self.record["steps"] = records
        session_start = time.monotonic()
        self.console.print(Rule(f"session {self.name}"))
        self.console.print(
            f"budget {format_duration(self.budget_s)} · seed {self.seed} · "
            f"log {self.log_path} · record {self.record_path}"
        )
        self._save()
        exit_status = EXIT_OK
        for index, (step, record) in enumerate(zip(steps, records, strict=True)):
            if exit_status != EXIT_OK:
                record.status = "skipped"
                continue
            remaining_s = self.budget_s - (time.monotonic() - session_start)
            if remaining_s <= 0:
                record.status = "skipped"
                record.error = "the session budget was spent before this step"
                self._fail(record, "out of time")
                exit_status = EXIT_FAILED
                continue
            planned_rest = sum(r.planned_s for r in records[index:]) or 1.0
            record.given_s = remaining_s * record.planned_s / planned_rest
            record.started_at = now_iso()
            record.status = "running"
            self._save()
            self.console.print(Rule(f"step {index + 1}/{len(steps)}: {step.name}", align="left"))
            if step.description:
                self.console.print(f"[dim]{step.description} (given {format_duration(record.given_s)})[/]")
            started = time.monotonic()
            context = StepContext(self, record.given_s, started, record.metrics)
            try:
                step.run(context)
                record.status = "passed"
            except KeyboardInterrupt:
                record.status = "interrupted"
                record.error = "interrupted by the user (Ctrl-C)"
                self._fail(record, "interrupted")
                exit_status = EXIT_INTERRUPTED
            except (StepFailed, UserError) as error:
                record.status = "failed"
                record.error = " ".join(str(error).split())
                self.record["user_error"] = isinstance(error, UserError)
                self.console.print(f"[bold red]step {step.name} failed:[/] {record.error}")
                self._fail(record, "failed")
                exit_status = EXIT_FAILED
            except SystemExit as error:  # a stage that exits on its own is a failure to report
                record.status = "failed"
                record.error = f"the step exited with status {error.code}"
                self._fail(record, "failed")
                exit_status = EXIT_FAILED
            except Exception as error:  # a bug: keep the traceback, in the log and on screen
                record.status = "failed"
                record.error = f"{type(error).__name__}: {error}"
                traceback.print_exc()
                self._fail(record, "failed")
                exit_status = EXIT_FAILED
            record.duration_s = time.monotonic() - started
            if record.status == "passed":
                note = ""
                if record.duration_s > record.given_s:
                    note = f" [yellow](over its {format_duration(record.given_s)} by {format_duration(record.duration_s - record.given_s)})[/]"
                self.console.print(f"[green]✓ {step.name}[/] in {format_duration(record.duration_s)}{note}")
            self.record["elapsed_s"] = time.monotonic() - session_start
            self._save()
            transcript.flush(force=True)
        if exit_status == EXIT_OK:
            self.record["status"] = "passed"
        self.record["elapsed_s"] = time.monotonic() - session_start
        return exit_status

    def _fail(self, record: StepRecord, status: str) -> None:
        self.record["status"] = status
        self.record["failed_step"] = record.name
        self.record["error"] = record.error

    def _save(self) -> None:
        data = dict(self.record)
        data["steps"] = [_rounded(vars(step)) for step in self.record["steps"]]
        data["elapsed_s"] = _rounded(data["elapsed_s"])
        data["metrics"] = {step.name: step.metrics for step in self.record["steps"] if step.metrics}
        write_json_atomically(self.record_path, data)

    def _print_summary(self) -> None:
        table = Table(title=f"session {self.name}: {self.record['status']}", title_justify="left")
        for column in ("step", "status", "planned", "given", "actual", "note"):
            table.add_column(column, justify="right" if column in ("planned", "given", "actual") else "left")
        styles = {"passed": "green", "failed": "bold red", "interrupted": "yellow", "skipped": "dim"}
        for step in self.record["steps"]:
            note = step.error or _headline(step.metrics)
            table.add_row(step.name, f"[{styles.get(step.status, '')}]{step.status}[/]",
                          format_duration(step.planned_s), format_duration(step.given_s),
                          format_duration(step.duration_s), note)
        table.add_row("total", self.record["status"], format_duration(self.budget_s), "",
                      format_duration(self.record["elapsed_s"]), "", style="bold")
        print_table(self.console, table)
        peaks = self.record["peak_resources"] or {}
        self.console.print(
            f"peak memory {format_bytes(peaks.get('peak_rss_bytes'))}"
            + (f" · accelerator {format_bytes(peaks['peak_accelerator_memory_bytes'])}"
               if peaks.get("peak_accelerator_memory_bytes") else "")
            + f" · disk written {format_bytes(peaks.get('disk_written_bytes'))}"
        )
        self.console.print(f"log: {self.log_path}\nrecord: {self.record_path}")


def _rounded(value: Any) -> Any:
    """Durations to the millisecond: the record is for reading and comparing, not for nanoseconds."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) if key.endswith("_s") else item for key, item in value.items()}
    return value


def _headline(metrics: dict[str, Any]) -> str:
    """The step's metric called `headline`, if it set one (shown in the summary table)."""
    return str(metrics.get("headline", ""))


def _jax_devices() -> list[str] | None:
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]
