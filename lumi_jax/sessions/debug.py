"""`make session-debug`: an interactive menu for when something is wrong.

Each choice does one job and returns to the menu: environment diagnostics, a pipeline smoke
test (prepare, train and evaluate a micro model in a temporary directory, so nothing of yours
is touched), one reading of the resource monitor, disk use of data/runs/sessions, cleanup (a
dry run first, then removal only if you confirm), and the last errors from the session records
and logs. Input comes from the terminal; end of input is "no" at a question and quits at the
menu, so it can also be scripted.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.console import Console
from rich.prompt import Confirm, Prompt
from rich.table import Table

from lumi_jax.sessions import cleanup, env_check, monitor, status
from lumi_jax.tables import print_table

MENU = {
    "1": "environment diagnostics",
    "2": "pipeline smoke test (micro model, temporary directory)",
    "3": "resource monitor (one reading; `make monitor` for a live view)",
    "4": "disk use of data/, runs/, sessions/",
    "5": "cleanup (dry run first)",
    "6": "last errors from session logs",
    "q": "quit",
}
ERROR_LINE = re.compile(r"^(error:|.*\b(Error|Exception)\b:|Traceback|.* failed:)")


def show_environment(console: Console, root: Path) -> None:
    checks = env_check.run_checks(root)
    print_table(console, env_check.checks_table(checks))
    failed = env_check.failures(checks)
    console.print(f"[bold red]{len(failed)} check(s) failed[/]" if failed else "[green]all needed checks pass[/]")


def smoke_test(console: Console, root: Path) -> None:
    from lumi_jax.sessions.smoke import run_smoke_test

    result = run_smoke_test(console)
    verdict = "[green]the pipeline works[/]" if result["ok"] else "[bold red]the pipeline is broken[/]"
    console.print(f"{verdict}: {result['detail']}")


def show_monitor(console: Console, root: Path) -> None:
    import time

    import psutil

    watch = monitor.ProcessWatch()
    psutil.cpu_percent()
    watch.lumi_processes()
    time.sleep(0.5)
    print_table(console, monitor.reading_tables(monitor.take_reading(root, watch)))


def show_disk(console: Console, root: Path) -> None:
    table = Table(title="Disk use", title_justify="left")
    table.add_column("path")
    table.add_column("size", justify="right")
    for name in ("data", "runs", "sessions", "backups"):
        top = root / name
        if not top.is_dir():
            table.add_row(f"{name}/", "absent")
            continue
        entries = sorted(top.iterdir())
        table.add_row(f"[bold]{name}/[/]", f"[bold]{monitor.format_bytes(cleanup.tree_size(top))}[/]")
        if name != "sessions":  # sessions/ holds many small files; its total is what matters
            for entry in entries:
                table.add_row(f"  {entry.name}", monitor.format_bytes(cleanup.tree_size(entry)))
    print_table(console, table)
    console.print(f"free: {monitor.format_bytes(status.disk_use(root)['free_bytes'])}")


def confirm(question: str, console: Console) -> bool:
    """Yes or no, default no; end of input (Ctrl-D, a closed pipe) or Ctrl-C is no."""
    try:
        return Confirm.ask(question, default=False, console=console)
    except (EOFError, KeyboardInterrupt):
        console.print()
        return False


def run_cleanup(console: Console, root: Path) -> None:
    notes: list[str] = []
    removals = cleanup.plan_cleanup(root, notes=notes)
    if not removals:
        for note in notes:
            console.print(f"[dim]{note}[/]")
        console.print("nothing to clean: no temporary files, no session logs older than 7 days")
        return
    print_table(console, cleanup.removals_table(removals, root, dry_run=True))
    for note in notes:
        console.print(f"[dim]{note}[/]")
    if confirm("remove these?", console):
        cleanup.remove(removals)
        console.print(f"removed {len(removals)} item(s)")
    else:
        console.print("nothing removed")


def show_errors(console: Console, root: Path, limit: int = 5) -> None:
    records = status.session_records(root)
    failed = [r for r in records if r["status"] != "passed"][-limit:]
    if not failed:
        console.print(f"no failed sessions among {len(records)} recorded")
    for record in failed:
        console.print(f"[bold]{record['started_at']} {record['session']}[/]: {record['status']}"
                      + (f" at step '{record['failed_step']}'" if record.get("failed_step") else "")
                      + (f": {record['error']}" if record.get("error") else ""))
        log = Path(record.get("log") or "")
        if not log.is_absolute():
            log = root / log
        if log.is_file():
            lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
                     if ERROR_LINE.match(line.strip())]
            for line in lines[-3:]:
                console.print(f"    [dim]{log.name}:[/] {line.strip()}")


ACTIONS = {"1": show_environment, "2": smoke_test, "3": show_monitor, "4": show_disk,
           "5": run_cleanup, "6": show_errors}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=".", help="the project directory (default: here)")


def run(args: argparse.Namespace) -> int:
    console = Console()
    root = Path(args.root)
    while True:
        console.rule("lumi_jax debug")
        for key, label in MENU.items():
            console.print(f"  [bold]{key}[/]  {label}")
        try:
            choice = Prompt.ask("choose", choices=list(MENU), default="q", console=console)
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        if choice == "q":
            return 0
        try:
            ACTIONS[choice](console, root)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
