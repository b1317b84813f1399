"""`lumi status` (`make session-status`): what exists, and what to run next.

Datasets (data/*/meta.json), runs with their step, loss and evaluation, the latest session and
how it ended, disk use, the device, and the session that makes sense next. It only reads.

It does not import JAX: on a GPU machine that would start a second GPU client next to a
training that may be running; the device line comes from nvidia-smi or the CPU count instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from lumi_jax.sessions.cleanup import checkpoint_steps, tree_size
from lumi_jax.sessions.monitor import format_bytes, nvidia_smi_memory
from lumi_jax.tables import print_table


def read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def last_metric(path: Path, key: str) -> tuple[int | None, float | None]:
    """The last (step, value) of `key` in a metrics.jsonl file."""
    if not path.exists():
        return None, None
    found: tuple[int | None, float | None] = (None, None)
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill: the rest of the file is still good
        if isinstance(record, dict) and record.get(key) is not None:
            found = (record.get("step"), record[key])
    return found


def datasets(root: Path) -> list[dict[str, Any]]:
    found = []
    data = root / "data"
    for directory in sorted(data.iterdir()) if data.is_dir() else []:
        meta = read_json_or_none(directory / "meta.json")
        if not directory.is_dir() or directory.name.startswith(".") or not isinstance(meta, dict):
            continue
        found.append({
            "name": directory.name, "path": str(directory), "kind": meta.get("kind"),
            "source": meta.get("source"), "vocab_size": meta.get("vocab_size"),
            "train_tokens": meta.get("train_tokens"), "val_tokens": meta.get("val_tokens"),
            "bytes_per_token": meta.get("bytes_per_token"),
        })
    return found


def evaluation_summary(run_dir: Path) -> dict[str, Any] | None:
    """The headline numbers of eval.json (and the grade of assess.json), None if not evaluated."""
    evaluation = read_json_or_none(run_dir / "eval.json")
    if not isinstance(evaluation, dict):
        return None
    validation = evaluation.get("validation") or {}
    summary = {key: validation.get(key) for key in ("loss", "bits_per_byte") if validation.get(key) is not None}
    exact_match = evaluation.get("exact_match")
    if isinstance(exact_match, dict) and exact_match.get("accuracy") is not None:
        summary["exact_match"] = exact_match["accuracy"]
    if evaluation.get("quick"):
        summary["quick"] = True
    assessment = read_json_or_none(run_dir / "assess.json")
    if isinstance(assessment, dict) and assessment.get("grade"):
        summary["grade"] = assessment["grade"]
    return summary


def runs(root: Path) -> list[dict[str, Any]]:
    found = []
    runs_dir = root / "runs"
    for run_dir in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        config = read_json_or_none(run_dir / "config.json")
        if not run_dir.is_dir() or not isinstance(config, dict):
            continue
        steps = checkpoint_steps(run_dir / "checkpoints")
        summary = read_json_or_none(run_dir / "summary.json") or {}
        loss_step, loss = last_metric(run_dir / "metrics.jsonl", "loss")
        _, val_loss = last_metric(run_dir / "metrics.jsonl", "val_loss")
        found.append({
            "name": run_dir.name, "path": str(run_dir),
            "model": (config.get("model") or {}).get("name"),
            "checkpoint_step": steps[-1][0] if steps else None,
            "target_steps": (config.get("train") or {}).get("steps"),
            "loss_step": loss_step, "train_loss": loss, "val_loss": val_loss,
            "stop_reason": summary.get("stop_reason"),
            "fine_tuned_from": config.get("init_from"),
            "evaluation": evaluation_summary(run_dir),
            "modified": run_dir.stat().st_mtime,
        })
    return found


def session_records(root: Path) -> list[dict[str, Any]]:
    """Session records, oldest first (their names are timestamps)."""
    sessions = root / "sessions"
    records = []
    for path in sorted(sessions.glob("*.json")) if sessions.is_dir() else []:
        record = read_json_or_none(path)
        if isinstance(record, dict) and "session" in record:
            record["record_path"] = str(path)
            if record.get("status") == "running" and not psutil.pid_exists(record.get("pid") or -1):
                record["status"] = "ended without finishing (killed?)"
            records.append(record)
    return records


def disk_use(root: Path) -> dict[str, Any]:
    sizes = {name: tree_size(root / name) for name in ("data", "runs", "sessions", "backups") if (root / name).exists()}
    return {"bytes": sizes, "free_bytes": shutil.disk_usage(root).free}


def device() -> str:
    gpus = nvidia_smi_memory()
    if gpus:
        return ", ".join(f"{g['device']} ({format_bytes(g['total_bytes'])})" for g in gpus)
    return f"CPU, {psutil.cpu_count()} cores, {format_bytes(psutil.virtual_memory().total)} RAM"


def next_session(found_datasets: list, found_runs: list, records: list) -> str:
    latest = records[-1] if records else None
    if latest and latest["status"] not in ("passed", "running"):
        where = f" at step '{latest['failed_step']}'" if latest.get("failed_step") else ""
        why = f": {latest['error']}" if latest.get("error") else ""
        return (f"the last session ({latest['session']}) {latest['status']}{where}{why} "
                f"— see {latest.get('log')}; fix it, then run `make session-{latest['session']}` again")
    passed = {r["session"] for r in records if r["status"] == "passed"}
    if not found_runs and "quick" not in passed:
        return "`make session-quick`: check the whole pipeline end to end (< 5 min)"
    if not any(r["model"] not in (None, "micro") for r in found_runs):
        return "`make session-prototype`: train the ~6M tiny model (a copy warm-up, then 1000 steps) and evaluate it"
    unevaluated = [r for r in found_runs if r["evaluation"] is None and r["checkpoint_step"]]
    if unevaluated:
        newest = max(unevaluated, key=lambda r: r["modified"])
        return f"`MODEL_PATH={newest['path']} make session-evaluation`: it has not been evaluated yet"
    if "experiment" not in passed:
        return "`make session-experiment`: pretrain the ~42M small model, then fine-tune it on instructions"
    return "`make session-evaluation`: assess the latest run and compare it with the earlier ones"


def gather(root: Path) -> dict[str, Any]:
    found_datasets, found_runs, records = datasets(root), runs(root), session_records(root)
    latest = records[-1] if records else None
    return {
        "datasets": found_datasets,
        "runs": found_runs,
        "latest_session": None if latest is None else {
            key: latest.get(key) for key in ("session", "status", "started_at", "ended_at", "elapsed_s",
                                             "failed_step", "error", "log", "record_path")
        },
        "sessions_recorded": len(records),
        "disk": disk_use(root),
        "device": device(),
        "next": next_session(found_datasets, found_runs, records),
    }


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def describe_evaluation(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "not evaluated"
    parts = []
    if "bits_per_byte" in summary:
        parts.append(f"{summary['bits_per_byte']:.3f} bits/byte" + (" (quick)" if summary.get("quick") else ""))
    if "exact_match" in summary:
        parts.append(f"exact match {summary['exact_match']:.0%}")
    if "grade" in summary:
        parts.append(f"grade {summary['grade']}")
    return ", ".join(parts)


def print_status(status: dict[str, Any], console: Console) -> None:
    table = Table(title="Datasets", title_justify="left")
    for column in ("name", "kind", "source", "vocab", "train tokens", "val tokens", "bytes/token"):
        table.add_column(column)
    for d in status["datasets"]:
        table.add_row(d["name"], d["kind"] or "", str(d["source"] or ""), _number(d["vocab_size"]),
                      _number(d["train_tokens"]), _number(d["val_tokens"]), _number(d["bytes_per_token"], 2))
    if status["datasets"]:
        print_table(console, table)
    else:
        console.print("Datasets: none yet (data/ is empty)")

    table = Table(title="Runs", title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("model", "step", "train", "val", "evaluation"):
        table.add_column(column)
    for r in status["runs"]:
        step = f"{r['checkpoint_step']}/{r['target_steps']}" if r["checkpoint_step"] else "no checkpoint"
        if r["stop_reason"] not in (None, "completed"):
            step += f" ({r['stop_reason'].replace('_', ' ')})"
        table.add_row(r["name"], r["model"] or "", step, _number(r["train_loss"], 2), _number(r["val_loss"], 2),
                      describe_evaluation(r["evaluation"]))
    if status["runs"]:
        print_table(console, table)
    else:
        console.print("Runs: none yet (runs/ is empty)")

    latest = status["latest_session"]
    if latest:
        ended = f"{latest['status']}" + (f" at step '{latest['failed_step']}': {latest['error']}"
                                         if latest.get("failed_step") else "")
        console.print(f"Latest session: {latest['session']} started {latest['started_at']}, {ended} "
                      f"(log {latest['log']}; {status['sessions_recorded']} recorded)")
    else:
        console.print("Latest session: none yet (sessions/ is empty)")
    disk = status["disk"]
    used = ", ".join(f"{name}/ {format_bytes(size)}" for name, size in disk["bytes"].items()) or "nothing yet"
    console.print(f"Disk: {used}; {format_bytes(disk['free_bytes'])} free")
    console.print(f"Device: {status['device']}")
    console.print(f"[bold]Next:[/] {status['next']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument("--root", default=".", help="the project directory (default: here)")


def run(args: argparse.Namespace) -> int:
    from lumi_jax.errors import UserError

    root = Path(args.root)
    if not root.is_dir():
        raise UserError(f"--root {root}: no such directory; run from the project directory")
    status = gather(root)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print_status(status, Console())
    return 0
