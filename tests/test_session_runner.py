"""The session runner: statuses, the shared budget, the log, the record, exit statuses."""

from __future__ import annotations

import io
import json
import sys
import time

import pytest
from rich.console import Console
from rich.live import Live
from rich.progress import Progress

from lumi_jax.errors import UserError
from lumi_jax.sessions.runner import SessionRunner, Step, StepFailed
from lumi_jax.sessions.transcript import LogScreen, Transcript

RECORD_FIELDS = {
    "session", "arguments", "started_at", "ended_at", "budget_s", "elapsed_s", "status", "steps",
    "failed_step", "error", "metrics", "peak_resources", "config_hash", "seed", "git",
    "package_versions", "reproducibility", "log", "outputs",
}
STEP_FIELDS = {"name", "status", "planned_s", "given_s", "duration_s", "error", "metrics"}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_runner(budget_s: float = 60.0) -> SessionRunner:
    return SessionRunner("unit", budget_s, {"time": budget_s / 60}, seed=3, command=["unit"])


def read_record(runner: SessionRunner) -> dict:
    return json.loads(runner.record_path.read_text())


def test_a_passing_session_records_every_field_and_exits_zero(project):
    def first(ctx):
        print("hello from the first step")
        ctx.metrics["answer"] = 42
        ctx.session.set_config_hash("abc123")

    runner = make_runner()
    status = runner.run([Step("first", first, 1), Step("second", lambda ctx: None, 3)])
    assert status == 0
    record = read_record(runner)
    assert RECORD_FIELDS <= set(record)
    assert record["status"] == "passed" and record["seed"] == 3 and record["config_hash"] == "abc123"
    assert record["metrics"] == {"first": {"answer": 42}}
    assert record["package_versions"]["jax"] and record["package_versions"]["python"]
    assert record["peak_resources"]["peak_rss_bytes"] > 0
    for step in record["steps"]:
        assert STEP_FIELDS <= set(step) and step["status"] == "passed" and step["duration_s"] >= 0
    # Planned time is the budget split by shares (1:3).
    assert [s["planned_s"] for s in record["steps"]] == [15.0, 45.0]
    log = runner.log_path.read_text()
    assert "hello from the first step" in log and "session unit: passed" in log
    assert runner.log_path.name.removesuffix(".log") == runner.record_path.name.removesuffix(".json")


def test_a_failing_step_fails_the_session_and_skips_the_rest(project):
    def broken(ctx):
        raise StepFailed("the loss did not fall")

    ran = []
    runner = make_runner()
    status = runner.run([Step("ok", lambda ctx: None, 1), Step("broken", broken, 1),
                         Step("after", lambda ctx: ran.append(1), 1)])
    assert status == 1 and not ran
    record = read_record(runner)
    assert record["status"] == "failed"
    assert record["failed_step"] == "broken" and record["error"] == "the loss did not fall"
    assert [s["status"] for s in record["steps"]] == ["passed", "failed", "skipped"]
    assert "the loss did not fall" in runner.log_path.read_text()


def test_a_bug_keeps_its_traceback_in_the_log(project):
    def buggy(ctx):
        raise ZeroDivisionError("division by zero")

    runner = make_runner()
    assert runner.run([Step("buggy", buggy, 1)]) == 1
    assert read_record(runner)["error"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in runner.log_path.read_text()


def test_a_user_mistake_in_a_step_exits_2_with_one_line_last(project, capsys):
    def mistaken(ctx):
        raise UserError("data/x: no such dataset; run lumi prepare first")

    runner = make_runner()
    assert runner.run([Step("mistaken", mistaken, 1)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: data/x: no such dataset; run lumi prepare first"
    assert read_record(runner)["user_error"] is True
    assert runner.log_path.read_text().splitlines()[-1] == "error: data/x: no such dataset; run lumi prepare first"


def test_time_saved_early_flows_to_later_steps_and_a_spent_budget_stops(project):
    runner = make_runner(budget_s=0.3)
    status = runner.run([Step("slow", lambda ctx: time.sleep(0.35), 1), Step("never", lambda ctx: None, 1)])
    record = read_record(runner)
    assert status == 1 and record["status"] == "out of time" and record["failed_step"] == "never"
    assert record["steps"][0]["given_s"] == pytest.approx(0.15, abs=0.02)

    runner = make_runner(budget_s=100)
    given = {}
    runner.run([Step("quick", lambda ctx: None, 1), Step("rest", lambda ctx: given.update(s=ctx.given_s), 1)])
    assert given["s"] > 95  # the first step's unused 50 s went to the second


def test_two_sessions_in_the_same_second_keep_separate_files(project):
    first, second = make_runner(), make_runner()
    assert first.record_path != second.record_path and first.log_path != second.log_path


def test_the_log_keeps_only_the_final_frame_of_live_displays():
    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=60)
    console.print("before")
    with Live("frame 1\nstill running", console=console, auto_refresh=False) as live:
        for frame in range(2, 6):
            live.update(f"frame {frame}\nstill running", refresh=True)
    with Progress(console=console, auto_refresh=False) as progress:
        task = progress.add_task("training", total=10)
        for _ in range(10):
            progress.advance(task)
            progress.refresh()
    console.print("after")
    assert "\x1b[" in terminal.getvalue()  # the terminal really got cursor moves
    screen = LogScreen()
    screen.feed(terminal.getvalue())
    lines = (screen.take_committed() + screen.pending_text()).splitlines()
    assert lines[0] == "before" and lines[-1] == "after"
    assert sum("frame" in line for line in lines) == 1 and "frame 5" in lines[1]
    assert sum("training" in line for line in lines) == 1 and "100%" in lines[3]


def test_transcript_tees_stdout_and_stderr_and_restores_them(tmp_path):
    stdout, stderr = sys.stdout, sys.stderr
    with Transcript(tmp_path / "a.log"):
        print("to stdout")
        print("to stderr", file=sys.stderr)
    assert sys.stdout is stdout and sys.stderr is stderr
    assert (tmp_path / "a.log").read_text() == "to stdout\nto stderr\n"
