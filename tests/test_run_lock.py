"""One writer per run: RUN/.lock refuses a second writer in one line, and dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lumi_jax.errors import UserError
from lumi_jax.run_lock import LOCK_NAME, RunLock, holds_lock

REPO = Path(__file__).resolve().parent.parent
TRAIN_SOURCE = (REPO / "lumi_jax" / "train.py").read_text(encoding="utf-8")

HOLDER = textwrap.dedent("""
    import sys, time
    from lumi_jax.run_lock import RunLock
    with RunLock(sys.argv[1], command="lumi train --out " + sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
""")
SECOND_WRITER = textwrap.dedent("""
    import sys
    from lumi_jax.errors import exit_on_user_error
    from lumi_jax.run_lock import RunLock
    with exit_on_user_error(), RunLock(sys.argv[1]):
        print("got the lock")
""")


def python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of tmp_path/run, as a running `lumi train` would."""
    run = tmp_path / "run"
    process = python("-c", HOLDER, str(run))
    assert process.stdout.readline().strip() == "locked"
    yield run, process
    if process.poll() is None:
        process.kill()
    process.wait()
    process.stdout.close()
    process.stderr.close()


def test_a_second_writer_exits_2_naming_the_holder_and_a_kill_9_leaves_no_stale_lock(holder):
    run, process = holder
    second = python("-c", SECOND_WRITER, str(run))
    out, err = second.communicate(timeout=60)
    assert second.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"PID {process.pid}" in lines[0] and "lumi train --out" in lines[0] and "another process" in lines[0]

    os.kill(process.pid, signal.SIGKILL)  # the holder dies without releasing anything
    process.wait()
    assert (run / LOCK_NAME).exists()  # the file stays behind, the lock does not
    third = python("-c", SECOND_WRITER, str(run))
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0 and "got the lock" in out, err
    assert not (run / LOCK_NAME).exists()  # released: the file is removed


def test_the_lock_is_reentrant_in_one_process_and_removed_on_release(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        assert holds_lock(run) and (run / LOCK_NAME).is_file()
        with RunLock(run):  # a session step that trains into a run it already holds
            assert holds_lock(run)
        assert holds_lock(run) and (run / LOCK_NAME).is_file()
    assert not holds_lock(run) and not (run / LOCK_NAME).exists()
    assert run.is_dir()  # it existed before: it stays


def test_a_refused_writer_leaves_no_directory_behind(tmp_path):
    run = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(RuntimeError), RunLock(run):
        assert run.is_dir()
        raise RuntimeError("a bad input found after the lock was taken")
    assert not (tmp_path / "new").exists()
    with RunLock(run):
        (run / "config.json").write_text("{}")
    assert (run / "config.json").is_file() and not (run / LOCK_NAME).exists()


def test_an_out_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(UserError, match="is a file, not a directory"):
        RunLock(tmp_path / "notes.txt").acquire()
    with pytest.raises(UserError, match="is a file, not a directory"):
        RunLock(tmp_path / "notes.txt" / "run").acquire()
    assert (tmp_path / "notes.txt").read_text() == "not a run"


@pytest.mark.skipif("RunLock" not in TRAIN_SOURCE, reason="train.py does not take the run lock yet")
def test_lumi_train_refuses_a_second_writer(holder, dataset_dir):
    run, process = holder
    second = python("-m", "lumi_jax.cli", "train", "--model", "micro", "--data", str(dataset_dir),
                    "--out", str(run), "--steps", "20", "--warmup", "2", "--quiet")
    _out, err = second.communicate(timeout=300)
    assert second.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert f"PID {process.pid}" in err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing of the run was written
