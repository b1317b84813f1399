"""Session tools and the session command line: cleanup, backup, status, bad values, architecture."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from lumi_jax.config import REPO_ROOT
from lumi_jax.session import main
from lumi_jax.sessions import backup

DAY_S = 24 * 3600


def make_old(path: Path, days: float) -> None:
    stamp = time.time() - days * DAY_S
    os.utime(path, (stamp, stamp))


def write(path: Path, text: str = "x", days: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if days:
        make_old(path, days)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with two datasets' worth of files, a run with three checkpoints, and sessions."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "config/architectures/m.json", '{"name": "m"}')
    write(tmp_path / "data/d/tokenizer.model", "tok", days=30)
    write(tmp_path / "data/d/meta.json", json.dumps({"kind": "text", "source": "sample", "vocab_size": 512,
                                                     "train_tokens": 1000, "val_tokens": 100}), days=30)
    write(tmp_path / "data/d/train.bin", "0" * 100, days=30)
    run = tmp_path / "runs/r"
    write(run / "config.json", json.dumps({"model": {"name": "micro"}, "train": {"steps": 300}}), days=30)
    write(run / "metrics.jsonl", '{"step": 10, "loss": 5.0}\n{"step": 300, "loss": 2.5}\n{"step": 300, "val_loss": 2.7}\n')
    for step in (100, 200, 300):
        write(run / f"checkpoints/{step}/params/data", f"params {step}", days=30)
        make_old(run / f"checkpoints/{step}", 30)
    write(run / "checkpoints/400.orbax-checkpoint-tmp-17/params/data", "half", days=2)
    make_old(run / "checkpoints/400.orbax-checkpoint-tmp-17", 2)
    write(tmp_path / "data/.e.partial-99999/train.bin", "half", days=2)
    make_old(tmp_path / "data/.e.partial-99999", 2)
    write(tmp_path / "data/.f.partial-12345/train.bin", "in progress")  # young: a job may be writing it
    write(tmp_path / "sessions/20200101_000000.log", "old log", days=30)
    write(tmp_path / "sessions/20200101_000000.json", json.dumps({"session": "quick", "status": "passed"}), days=30)
    write(tmp_path / "sessions/29990101_000000.log", "new log")
    return tmp_path


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# cleanup


def test_cleanup_dry_run_lists_and_removes_nothing(project, capsys):
    before = files(project)
    assert main(["cleanup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert files(project) == before
    assert "would remove 3 item(s)" in out
    for listed in ("20200101_000000.log", "400.orbax-checkpoint-tmp-17", ".e.partial-99999"):
        assert listed in out


def test_cleanup_removes_temporary_files_and_old_logs_but_never_checkpoints_or_data(project):
    assert main(["cleanup"]) == 0
    left = files(project)
    assert "sessions/20200101_000000.log" not in left
    assert not any("orbax-checkpoint-tmp" in f or ".e.partial" in f for f in left)
    for kept in ("sessions/20200101_000000.json", "sessions/29990101_000000.log", "data/d/train.bin",
                 "data/.f.partial-12345/train.bin", "runs/r/checkpoints/100/params/data",
                 "runs/r/checkpoints/300/params/data", "runs/r/metrics.jsonl"):
        assert kept in left


def test_cleanup_flags_remove_named_datasets_and_no_checkpoint_before_the_newest_restores(project, capsys):
    assert main(["cleanup", "--checkpoints", "--data", "d"]) == 0
    left = files(project)
    # These checkpoints are stand-ins that do not restore, so none is removed; a real run's old
    # checkpoints are removed in tests/test_reliability_fixes.py.
    for step in (100, 200, 300):
        assert f"runs/r/checkpoints/{step}/params/data" in left
    assert "kept every checkpoint of runs/r: none of them restores" in " ".join(capsys.readouterr().out.split())
    assert not any(f.startswith("data/d/") for f in left)
    with pytest.raises(SystemExit) as exit_info:
        main(["cleanup", "--data", "nope"])
    assert exit_info.value.code == 2
    assert "no such dataset" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# backup


def test_backup_holds_the_latest_checkpoint_and_its_manifest_verifies(project):
    archive, manifest = backup.create_backup(project, project / "backups")
    assert archive.exists() and archive.with_name(archive.name + ".sha256").exists()
    assert not archive.with_name(archive.name + ".partial").exists()
    names = set(manifest["files"])
    assert {"config/architectures/m.json", "data/d/tokenizer.model", "data/d/meta.json",
            "runs/r/config.json", "runs/r/metrics.jsonl", "runs/r/checkpoints/300/params/data",
            "sessions/20200101_000000.json"} <= names
    assert not any("checkpoints/100" in n or "checkpoints/200" in n or "train.bin" in n or "tmp" in n
                   for n in names)
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == backup.MANIFEST_NAME
    assert backup.verify_archive(archive)["files"] == manifest["files"]
    assert main(["backup", "--verify", str(archive)]) == 0


def test_a_corrupted_backup_is_detected(project, capsys):
    archive, _ = backup.create_backup(project, project / "backups", run_names=["r"])
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(backup.BackupCorrupt, match="differs"):
        backup.verify_archive(archive)  # caught by the archive's recorded sha256
    archive.with_name(archive.name + ".sha256").unlink()
    with pytest.raises(backup.BackupCorrupt):
        backup.verify_archive(archive)  # and without it, by gzip's CRC or the manifest
    capsys.readouterr()
    assert main(["backup", "--verify", str(archive)]) == 1
    assert "backup damaged" in capsys.readouterr().out


def test_backup_of_an_unknown_run_is_refused(project, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["backup", "--runs", "nope"])
    assert exit_info.value.code == 2 and "no such run" in capsys.readouterr().err
    assert not (project / "backups").exists()


# ---------------------------------------------------------------------------------------------
# status


def test_status_of_an_empty_project_says_to_start_with_the_quick_session(tmp_path, capsys):
    assert main(["status", "--root", str(tmp_path), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["datasets"] == [] and found["runs"] == [] and found["latest_session"] is None
    assert "session-quick" in found["next"]
    assert main(["status", "--root", str(tmp_path)]) == 0
    assert "none yet" in capsys.readouterr().out


def test_status_lists_datasets_runs_and_the_latest_session(project, capsys):
    assert main(["status", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in found["datasets"]] == ["d"]
    (run,) = found["runs"]
    assert (run["name"], run["checkpoint_step"], run["train_loss"], run["val_loss"]) == ("r", 300, 2.5, 2.7)
    assert found["latest_session"]["session"] == "quick" and found["latest_session"]["status"] == "passed"
    assert "session-prototype" in found["next"]  # only a micro run exists
    write(project / "sessions/20200102_000000.json", json.dumps(
        {"session": "prototype", "status": "failed", "failed_step": "train", "error": "diverged", "log": "x.log"}))
    assert main(["status", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert "prototype" in found["next"] and "diverged" in found["next"]


# ---------------------------------------------------------------------------------------------
# the command line: bad values are refused in one line with exit status 2, creating nothing


@pytest.mark.parametrize("argv, message", [
    (["quick", "--time", "abc"], "'abc' is not a number of minutes"),
    (["prototype", "--time", "-5"], "not a usable budget"),
    (["evaluation", "--run", "runs/does-not-exist"], "no such run directory"),
    (["evaluation", "--model", "runs/x"], "give the run with --run"),  # --model is a model config everywhere
    (["prototype", "--model", "no-such-model"], "no such model config"),
    (["nonsense"], "unknown session 'nonsense'"),
    (["prototype", "--data", "no/such/file.txt"], "no such file"),
    (["prototype", "--config", "no-such-model"], "no such model config"),
    (["architecture", "--config", "no-such-model"], "no such file or directory"),
    (["quick", "--seed", "x"], "not a whole number"),
    (["quick", "--steps", "0"], "must be positive"),
])
def test_bad_values_give_one_clear_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing created for a typo


def test_make_passes_session_settings_through_and_python_refuses_bad_ones(tmp_path):
    def dry_run(*args: str) -> str:
        return subprocess.run(["make", "-n", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout

    assert "-m lumi_jax.session quick --time 'abc' --config 'micro' --data 'notes.txt'" in dry_run(
        "session-quick", "SESSION_TIME=abc", "CONFIG=micro", "DATA=notes.txt", "MODEL_PATH=runs/x")
    assert "--config" not in dry_run("session-architecture")  # the Makefile's own CONFIG default is not a choice
    result = subprocess.run([sys.executable, "-m", "lumi_jax.session", "quick", "--time", "abc"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "SESSION_TIME" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# the architecture session


def test_architecture_session_validates_analyses_and_records(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["architecture", "--config", "micro"]) == 0
    (record_path,) = (tmp_path / "sessions").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "passed" and record["config_hash"]
    assert [s["name"] for s in record["steps"]] == ["validate configs", "analyse", "suggest"]
    assert record["metrics"]["analyse"]["models"]["micro"]["params"] == 131_392
    assert record["metrics"]["analyse"]["models"]["micro"]["fits_for_training"] is True


def test_architecture_session_fails_on_an_invalid_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = write(tmp_path / "bad.json", json.dumps({"name": "bad", "vocab_size": 512, "d_model": 60,
                                                   "n_layers": 2, "n_heads": 8, "max_seq_len": 64}))
    assert main(["architecture", "--config", str(bad)]) == 1
    (record_path,) = (tmp_path / "sessions").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "failed" and record["failed_step"] == "validate configs"
    assert "n_heads" in record["error"]


# ---------------------------------------------------------------------------------------------
# the debug menu (the smoke test, choice 2, runs in the quick-session tests)


def test_debug_menu_choices_each_do_their_job(project, monkeypatch, capsys):
    write(project / "sessions/20200103_000000.json", json.dumps(
        {"session": "quick", "status": "failed", "started_at": "2020-01-03", "failed_step": "train",
         "error": "training diverged at step 7", "log": "sessions/20200103_000000.log"}))
    write(project / "sessions/20200103_000000.log", "step 1 ...\nerror: training diverged at step 7\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n3\n4\n5\nn\n6\nq\n"))
    assert main(["debug"]) == 0
    out = capsys.readouterr().out
    assert "Environment" in out and "jax devices" in out  # 1: diagnostics
    assert "Resources" in out and "lumi processes" in out  # 3: a monitor reading
    assert "Disk use" in out and "runs/" in out  # 4: disk use
    assert "would remove" in out and "nothing removed" in out  # 5: cleanup, declined
    assert (project / "sessions/20200101_000000.log").exists()
    assert "training diverged at step 7" in out  # 6: the last errors


def test_debug_menu_quits_at_end_of_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["debug"]) == 0
