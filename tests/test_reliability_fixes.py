"""The small defects of issue 15, each fixed: make clean and odd paths, prompts at end of input,
cleanup that checks before it deletes and says what it skipped, atomic rewrites, short runs'
warmup, negative durations, tables that never cut a value, and the disk as df reports it."""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from rich.console import Console
from rich.table import Table

from lumi_jax.config import TrainConfig
from lumi_jax.errors import UserError
from lumi_jax.flags import add_train_flags, train_config_from_flags
from lumi_jax.metrics import MetricsLog, _duration, read_metrics
from lumi_jax.sessions import cleanup, debug, monitor
from lumi_jax.tables import print_table

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# make clean


def test_make_clean_removes_only_the_caches_whatever_the_paths_hold(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make here")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    keep = [tmp_path / "runs" / "old" / "checkpoints" / "10" / "params.bin",
            tmp_path / "runs" / "old notes" / "notes.txt",
            tmp_path / "runs" / "it's \"quoted\"" / "config.json",
            tmp_path / "runs" / "new\nline" / "summary.json",
            tmp_path / ".venv" / "lib" / "__pycache__" / "keep.pyc"]
    caches = [tmp_path / "runs" / "old notes" / "__pycache__" / "a.pyc",
              tmp_path / "runs" / "it's \"quoted\"" / "__pycache__" / "b.pyc",
              tmp_path / "runs" / "new\nline" / ".pytest_cache" / "c",
              tmp_path / "lumi_jax" / "__pycache__" / "d.pyc"]
    for path in keep + caches:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    result = subprocess.run(["make", "-s", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all(path.exists() for path in keep)
    assert not any(path.parent.exists() for path in caches)


# ---------------------------------------------------------------------------------------------
# Prompts: end of input is "no".


def old_temporary(root: Path) -> Path:
    path = root / "runs" / "x" / ".metrics.jsonl.tmp"
    path.parent.mkdir(parents=True)
    path.write_text("left by a kill -9")
    two_hours_ago = time.time() - 7200
    os.utime(path, (two_hours_ago, two_hours_ago))
    return path


def test_debug_menu_treats_end_of_input_at_a_question_as_no(tmp_path, monkeypatch, capsys):
    leftover = old_temporary(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("5\n"))  # `printf '5\n' | make session-debug`
    assert debug.run(argparse.Namespace(root=str(tmp_path))) == 0
    out = capsys.readouterr().out
    assert "nothing removed" in out and leftover.exists() and "Traceback" not in out


# ---------------------------------------------------------------------------------------------
# cleanup


def test_cleanup_says_which_young_temporary_items_it_left(tmp_path, capsys):
    young = tmp_path / "runs" / "x" / ".summary.json.tmp"
    young.parent.mkdir(parents=True)
    young.write_text("a save in progress, or a kill -9 a minute ago")
    old = old_temporary(tmp_path / "other")
    notes: list[str] = []
    removals = cleanup.plan_cleanup(tmp_path, notes=notes)
    assert removals == [] and young.exists()
    assert len(notes) == 1 and "younger than an hour" in notes[0] and "runs/x/.summary.json.tmp" in notes[0]
    assert [r.path for r in cleanup.plan_cleanup(tmp_path / "other")] == [old]


@pytest.fixture(scope="module")
def three_checkpoints(micro_config, dataset_dir, tmp_path_factory, compilation_cache):
    from lumi_jax.train import train

    out = tmp_path_factory.mktemp("cleanup") / "run"
    config = TrainConfig(steps=30, batch_size=8, context=32, lr=3e-3, warmup=4, min_lr=3e-4,
                         eval_every=0, save_every=10, log_every=10)
    train(config, micro_config, dataset_dir, out, show_progress=False)
    return out


def steps_of(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def test_cleanup_checkpoints_keeps_the_newest_that_restores(three_checkpoints, tmp_path):
    run = tmp_path / "runs" / "r"
    shutil.copytree(three_checkpoints, run)
    assert steps_of(run) == [10, 20, 30]
    arrays = [p for p in (run / "checkpoints" / "30" / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    garbled = max(arrays, key=lambda p: p.stat().st_size)
    data = bytearray(garbled.read_bytes())
    data[len(data) // 2] ^= 0x01
    garbled.write_bytes(bytes(data))
    notes: list[str] = []
    removals = cleanup.plan_cleanup(tmp_path, checkpoints=True, notes=notes)
    assert [r.path.name for r in removals] == ["10"]  # 20 restores and stays; 30 is damaged, left in place
    assert any("step 20" in note and "damaged" in note for note in notes)
    cleanup.remove(removals)
    assert steps_of(run) == [20, 30]


def test_cleanup_checkpoints_leaves_a_run_being_written(three_checkpoints, tmp_path):
    run = tmp_path / "runs" / "r"
    shutil.copytree(three_checkpoints, run)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from lumi_jax.run_lock import RunLock
        with RunLock(sys.argv[1], command="lumi train --out " + sys.argv[1]):
            print("locked", flush=True)
            time.sleep(600)
        """), str(run)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        notes: list[str] = []
        assert cleanup.plan_cleanup(tmp_path, checkpoints=True, notes=notes) == []
        assert len(notes) == 1 and f"PID {holder.pid}" in notes[0]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert steps_of(run) == [10, 20, 30]


# ---------------------------------------------------------------------------------------------
# Atomic rewrites


def test_metrics_truncation_on_resume_is_atomic(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step})
    log.truncate_after(3)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]

    def crash(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        log.truncate_after(1)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]  # whole, not cut
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# ---------------------------------------------------------------------------------------------
# A short run's warmup


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_flags(parser)
    return parser.parse_args(list(argv))


def test_steps_40_without_a_recipe_scales_the_warmup_down_and_says_so(capsys):
    config = train_config_from_flags(flags("--steps", "40"), TrainConfig().to_dict(), scale_warmup=True)
    assert (config.steps, config.warmup) == (40, 4)
    assert capsys.readouterr().out.strip() == "warmup 100 -> 4 steps (a tenth of --steps 40); give --warmup N to choose it"
    assert train_config_from_flags(flags("--steps", "40", "--warmup", "7"), TrainConfig().to_dict(),
                                   scale_warmup=True).warmup == 7  # an explicit warmup is kept
    assert train_config_from_flags(flags("--steps", "5000"), TrainConfig().to_dict(), scale_warmup=True).warmup == 100
    with pytest.raises(UserError, match="warmup"):  # a run being continued keeps its warmup
        train_config_from_flags(flags("--steps", "40"), TrainConfig().to_dict())


# ---------------------------------------------------------------------------------------------
# Displays


def test_a_negative_budget_left_prints_as_minus_its_own_size():
    assert _duration(-22) == "-0:22" and _duration(-3700) == "-1:01:40"
    assert _duration(95) == "1:35" and _duration(3725) == "1:02:05" and _duration(None) == "–"


def test_tables_at_80_columns_never_cut_a_value():
    table = Table(title="Parameters")
    for column in ("model", "total", "embeddings", "attention", "mlp", "norms", "head", "formula", "published"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row("tinyllama-1.1b", "1,100,048,384", "65.54M", "207.62M", "761.27M", "92.16K", "65.54M", "✓",
                  "1,100,000,000")
    table.add_row("tiny", "6,163,712", "1.05M", "1.57M", "3.54M", "3.33K", "tied", "✓", "")
    console = Console(width=80, record=True, file=io.StringIO())
    print_table(console, table)
    text = console.export_text()
    assert "…" not in text and "6,163,712" in text and "1,100,048,384" in text


def test_architecture_tables_at_80_columns_never_cut_a_value(capsys, monkeypatch):
    from lumi_jax import cli

    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["architecture", "config/architectures"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "6,163,712" in out and "109,529,856" in out


def test_monitor_reports_the_disk_as_df_does(tmp_path):
    reading = monitor.take_reading(tmp_path, monitor.ProcessWatch())
    usage = psutil.disk_usage(str(tmp_path))
    assert reading["disk_percent"] == math.ceil(usage.percent)  # df: used / (used + available), rounded up
    assert abs(reading["disk_free_bytes"] - usage.free) < 1 << 30
    console = Console(width=80, record=True, file=io.StringIO())
    print_table(console, monitor.reading_tables(reading))
    assert "free" in console.export_text()


# ---------------------------------------------------------------------------------------------
# The README's generate example on the micro model


def test_generate_with_the_default_tokens_works_on_micro_and_a_bad_count_is_not_glued_to_the_prompt(
        three_checkpoints, capsys):
    from lumi_jax import cli

    assert cli.main(["generate", "--run", str(three_checkpoints), "--prompt", "Once upon a time", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("Once upon a time")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--run", str(three_checkpoints), "--prompt", "Once upon a time",
                  "--max-new-tokens", "128"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == "" and "use 1 to 127" in captured.err
