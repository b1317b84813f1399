"""Several hosts, for real: `lumi launch` runs lumi as two processes joined through jax.distributed
(gloo collectives over 127.0.0.1, one CPU device each), and they must train exactly like one
process with two simulated devices.

What the two-process tests prove (micro model, a few steps, batch 8):

- `--mesh data=2` and `--mesh fsdp=2` (after a copy warm-up) over 2 processes give the losses,
  validation losses and final parameters of 1 process with 2 devices
  (XLA_FLAGS=--xla_force_host_platform_device_count=2), bit for bit;
- a checkpoint written by 2 processes continues in 1 process with 1 device (resharded), and one
  written by 1 process continues in 2;
- one process killed with SIGKILL: the launcher stops the other and exits non-zero within 60 s,
  naming the rank; the same command again resumes and ends bit-identical to the uninterrupted run;
- a stop that reaches only one process (SIGINT to rank 1) stops both at the same step, saved;
- only process 0 writes metrics.jsonl, summary.json, curves.png and config.json (an audit hook in
  each process records every file it opens for writing; nothing is patched).

The launcher's own behaviour (prefixes, first failure, forwarded Ctrl-C, no orphans) is tested
first with small Python children, without JAX.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import psutil
import pytest

from lumi_jax.launch import child_environments, describe_status
from lumi_jax.metrics import read_metrics
from lumi_jax.runs import load_run
from lumi_jax.session import main as session_main

REPO = Path(__file__).resolve().parent.parent
DISTRIBUTED_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS")
SHORT = ["--model", "micro", "--batch-size", "8", "--context", "32", "--lr", "3e-3", "--warmup", "2",
         "--min-lr", "3e-4", "--log-every", "1", "--quiet"]
EIGHT_STEPS = [*SHORT, "--steps", "8", "--save-every", "4", "--eval-every", "4", "--eval-batches", "2"]
LONG = [*SHORT, "--steps", "120", "--save-every", "10", "--eval-every", "0"]  # long enough to be killed mid-way
WRITTEN_BY_PROCESS_0 = ("metrics.jsonl", "summary.json", "curves.png", "config.json")

# Loaded by every child through PYTHONPATH: an audit hook (PEP 578) that records each file under
# LUMI_TEST_WATCH opened for writing or renamed into place, one log per process. Observes only.
WRITE_LOG_HOOK = textwrap.dedent("""
    import os, sys
    if os.environ.get("LUMI_TEST_WRITE_LOG"):
        _fd = os.open(os.environ["LUMI_TEST_WRITE_LOG"] + "." + os.environ.get("JAX_PROCESS_ID", "single"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _root = os.environ["LUMI_TEST_WATCH"]
        _writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

        def _record(path):
            if isinstance(path, (str, os.PathLike)):
                path = os.path.abspath(os.fspath(path))
                if path.startswith(_root):
                    os.write(_fd, (path + "\\n").encode())

        def _hook(event, args):
            if event == "open" and isinstance(args[2], int) and args[2] & _writing:
                _record(args[0])
            elif event in ("os.rename", "os.replace"):
                _record(args[1])

        sys.addaudithook(_hook)
""")

pytestmark = pytest.mark.slow


def clean_environment(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in DISTRIBUTED_VARIABLES}
    return dict(env, JAX_PLATFORMS="cpu", **extra)


def lumi_launch(*command: str, processes: int = 2, env: dict | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumi_jax.cli", "launch", "--processes", str(processes), "--grace",
                           "5", "--", *command], cwd=REPO, env=env or clean_environment(), capture_output=True,
                          text=True, timeout=timeout)


def lumi_one_process(*command: str, devices: int = 2) -> subprocess.CompletedProcess:
    env = clean_environment(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "lumi_jax.cli", *command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def succeeded(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 0


def tail(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr)[-3000:]


def losses(run: Path) -> list[tuple]:
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")]


def parameters(run: Path) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(load_run(run).params)]


def assert_same_parameters(a: Path, b: Path, exact: bool = True) -> None:
    for x, y in zip(parameters(a), parameters(b), strict=True):
        if exact:
            assert np.array_equal(x, y), f"the parameters of {a.name} and {b.name} differ"
        else:
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)


def drop_checkpoint(run: Path, step: int, copy_to: Path) -> Path:
    """A copy of `run` whose latest checkpoint is gone: continuing it redoes the last steps."""
    shutil.copytree(run, copy_to)
    shutil.rmtree(copy_to / "checkpoints" / str(step))
    return copy_to


# ---------------------------------------------------------------------------------------------
# The launcher itself, with small Python children (no JAX).

def launcher(devices: int = 1, timeout_s: float | None = None) -> str:
    """`python -c` code launching the rest of its arguments as 2 processes."""
    return ("import sys; from lumi_jax.launch import launch_argv; "
            f"sys.exit(launch_argv(sys.argv[1:], 2, devices_per_process={devices}, grace_s=2, timeout_s={timeout_s}))")


def start_launcher(child_script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", launcher(), sys.executable, "-c", textwrap.dedent(child_script)],
                            cwd=REPO, env=clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def read_until(stream, count: int, word: str, timeout_s: float = 30) -> list[str]:
    """Lines of `stream` until `count` of them contain `word`."""
    lines, deadline = [], time.monotonic() + timeout_s
    while sum(word in line for line in lines) < count:
        assert time.monotonic() < deadline, f"waited for {count} × {word!r}; got {lines}"
        line = stream.readline()
        assert line, f"the stream ended before {count} × {word!r}: {lines}"
        lines.append(line)
    return lines


def test_the_environment_of_each_process():
    environments, platform = child_environments(2, 3, 1234, base={"XLA_FLAGS": "--xla_foo=1", "JAX_PLATFORMS": "cpu"})
    assert platform == "cpu"
    assert [env["JAX_PROCESS_ID"] for env in environments] == ["0", "1"]
    for env in environments:
        assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234" and env["JAX_NUM_PROCESSES"] == "2"
        assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=3"
    assert describe_status(-9) == "killed by SIGKILL" and describe_status(3) == "exit status 3"


def test_prefixes_and_the_first_failure_stops_the_others():
    launcher = start_launcher("""
        import os, sys, time
        rank = os.environ["JAX_PROCESS_ID"]
        print(f"hello from {rank}", flush=True)
        if rank == "1":
            time.sleep(0.5)
            print("ValueError: boom", file=sys.stderr, flush=True)
            sys.exit(3)
        time.sleep(120)  # rank 0 would wait for ever: the launcher must stop it
    """)
    started = time.monotonic()
    stdout, stderr = launcher.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert launcher.returncode == 3
    assert "[0] hello from 0" in stdout and "[1] hello from 1" in stdout
    assert stderr.strip().splitlines()[-1].startswith("lumi launch: process 1 of 2 failed (exit status 3)")
    assert stderr.strip().endswith("its last error line: ValueError: boom")


def test_processes_past_the_timeout_are_stopped():
    result = subprocess.run([sys.executable, "-c", launcher(timeout_s=1), sys.executable, "-c",
                             "import time; time.sleep(120)"], cwd=REPO, env=clean_environment(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 124
    assert "still running after 1 s; stopping them" in result.stderr


def test_ctrl_c_reaches_every_process_once():
    launcher = start_launcher("""
        import os, signal, time
        got = []
        signal.signal(signal.SIGINT, lambda number, frame: got.append(number))
        print("ready", flush=True)
        while not got:
            time.sleep(0.05)
        time.sleep(0.5)  # "saving": a second SIGINT would arrive now, if one were sent
        print(f"stopped after {len(got)} signal(s)", flush=True)
    """)
    read_until(launcher.stdout, 2, "ready")
    launcher.send_signal(signal.SIGINT)
    stdout, _stderr = launcher.communicate(timeout=30)
    assert launcher.returncode == 0
    assert stdout.count("stopped after 1 signal(s)") == 2


def test_no_process_outlives_a_killed_launcher():
    launcher = start_launcher("""
        import os, time
        print("pid", os.getpid(), flush=True)
        time.sleep(120)
    """)
    pids = [int(line.split()[-1]) for line in read_until(launcher.stdout, 2, "pid") if "pid" in line]
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
        assert time.monotonic() < deadline, "a child of the killed launcher is still running"
        time.sleep(0.1)


AGREEMENT = textwrap.dedent("""
    import json
    from lumi_jax import sharding as shard
    shard.initialize_distributed()
    import jax
    rank = jax.process_index()
    print(json.dumps({"any": shard.any_process([rank == 1, False]), "zero": shard.from_process_0([10.0 + rank, 2.5])}))
""")


def test_processes_agree_on_flags_and_on_process_0s_numbers():
    """What the loop's stop decision and the time-aware schedule rely on, over 2 real processes."""
    result = subprocess.run([sys.executable, "-c", launcher(devices=2), sys.executable, "-c", AGREEMENT],
                            cwd=REPO, env=clean_environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, tail(result)
    # A process's C++ side (gloo) may print onto the end of the same line: read the object alone.
    answers = [json.JSONDecoder().raw_decode(line[line.index('{"any"'):])[0]
               for line in result.stdout.splitlines() if '{"any"' in line]
    assert len(answers) == 2
    assert all(answer == {"any": [True, False], "zero": [10.0, 2.5]} for answer in answers), answers


# ---------------------------------------------------------------------------------------------
# Two processes training.


@pytest.fixture(scope="module")
def data_parallel(dataset_dir, tmp_path_factory):
    """The same 8 steps as 2 processes (1 device each) and as 1 process with 2 devices, --mesh data=2."""
    root = tmp_path_factory.mktemp("multihost")
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(WRITE_LOG_HOOK)
    two, one = root / "two", root / "one"
    env = clean_environment(PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
                            LUMI_TEST_WRITE_LOG=str(root / "writes"), LUMI_TEST_WATCH=str(two))
    result = lumi_launch("train", *EIGHT_STEPS, "--data", str(dataset_dir), "--out", str(two), "--mesh", "data=2",
                         env=env)
    assert succeeded(result), tail(result)
    result = lumi_one_process("train", *EIGHT_STEPS, "--data", str(dataset_dir), "--out", str(one), "--mesh", "data=2")
    assert succeeded(result), tail(result)
    return {"two": two, "one": one, "writes": root / "writes", "root": root}


def test_two_processes_train_like_one_with_two_devices(data_parallel):
    two, one = data_parallel["two"], data_parallel["one"]
    assert losses(two) == losses(one)
    assert any(val is not None for _, _, val in losses(two)), "no evaluation was logged"
    assert json.loads((two / "summary.json").read_text())["steps"] == 8
    assert_same_parameters(two, one)  # load_run: a 2-process checkpoint read by this 1-device process


def test_only_process_0_writes_the_run_files(data_parallel):
    written = {rank: Path(f"{data_parallel['writes']}.{rank}").read_text().split() for rank in ("0", "1")}
    names = {rank: {Path(path).name for path in paths if "/checkpoints" not in path} for rank, paths in written.items()}
    assert set(WRITTEN_BY_PROCESS_0) <= names["0"], names["0"]
    assert not names["1"] & set(WRITTEN_BY_PROCESS_0), names["1"]
    assert all("/checkpoints" in path for path in written["1"]), "process 1 wrote outside checkpoints/"
    assert any("/checkpoints/" in path for path in written["1"]), "process 1 wrote no checkpoint shard"


def test_fsdp_over_two_processes_trains_like_one_with_two_devices(dataset_dir, tmp_path):
    """With a copy warm-up first: its synthetic rows too are one global batch, sliced per process."""
    command = [*SHORT, "--steps", "4", "--save-every", "4", "--eval-every", "2", "--eval-batches", "2",
               "--copy-warmup-steps", "2", "--data", str(dataset_dir), "--mesh", "fsdp=2"]
    result = lumi_launch("train", *command, "--out", str(tmp_path / "two"))
    assert succeeded(result), tail(result)
    result = lumi_one_process("train", *command, "--out", str(tmp_path / "one"))
    assert succeeded(result), tail(result)
    assert losses(tmp_path / "two") == losses(tmp_path / "one")
    assert_same_parameters(tmp_path / "two", tmp_path / "one")


def test_checkpoints_move_between_two_processes_and_one(data_parallel, dataset_dir, tmp_path):
    two, one = data_parallel["two"], data_parallel["one"]
    # Written by 2 processes, continued by 1 process on 1 device: every array resharded.
    from_two = drop_checkpoint(two, 8, tmp_path / "from_two")
    result = lumi_one_process("train", "--out", str(from_two), "--data", str(dataset_dir), "--mesh", "data=1",
                              "--quiet", devices=1)
    assert succeeded(result), tail(result)
    assert json.loads((from_two / "summary.json").read_text())["resumed_from_step"] == 4
    assert_same_parameters(from_two, two, exact=False)  # 1 device sums the batch in another order than 2
    # Written by 1 process (2 devices), continued by 2 processes: bit for bit.
    from_one = drop_checkpoint(one, 8, tmp_path / "from_one")
    result = lumi_launch("train", "--out", str(from_one), "--data", str(dataset_dir), "--quiet")
    assert succeeded(result), tail(result)
    assert json.loads((from_one / "summary.json").read_text())["resumed_from_step"] == 4
    assert_same_parameters(from_one, two)
    assert losses(from_one) == losses(two)


def child_of_rank(launcher_pid: int, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher_pid).children():
        if child.environ().get("JAX_PROCESS_ID") == str(rank):
            return child
    raise AssertionError(f"the launcher has no process {rank}")


def wait_for(path: Path, launcher: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_dir():
        assert launcher.poll() is None, f"the launch ended before {path} appeared: {launcher.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear in time"
        time.sleep(0.05)


def start_launch(*command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lumi_jax.cli", "launch", "--processes", "2", "--grace", "5", "--",
                             *command], cwd=REPO, env=clean_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop_all(launcher: subprocess.Popen) -> None:
    """After a failed assertion: kill what this test started (the children by pid, then the launcher)."""
    if launcher.poll() is None:
        for child in psutil.Process(launcher.pid).children():
            child.kill()
        launcher.kill()
        launcher.wait()


def test_one_process_killed_stops_the_other_and_the_relaunch_matches(dataset_dir, tmp_path):
    command = ["train", *LONG, "--data", str(dataset_dir), "--mesh", "data=2"]
    result = lumi_launch(*command, "--out", str(tmp_path / "whole"))
    assert succeeded(result), tail(result)

    out = tmp_path / "killed"
    launcher = start_launch(*command, "--out", str(out))
    try:
        wait_for(out / "checkpoints" / "10", launcher)
        child_of_rank(launcher.pid, 1).kill()  # SIGKILL
        killed = time.monotonic()
        _stdout, stderr = launcher.communicate(timeout=60)
    finally:
        stop_all(launcher)
    assert time.monotonic() - killed < 60
    assert launcher.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lumi launch: process 1 of 2 failed (killed by SIGKILL); stopped the others"), last
    killed_at = max(r["step"] for r in read_metrics(out / "metrics.jsonl"))
    assert killed_at < 120, "the run finished before it was killed; the test proves nothing"

    result = lumi_launch(*command, "--out", str(out))  # the same command again
    assert succeeded(result), tail(result)
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] >= 10
    assert_same_parameters(out, tmp_path / "whole")
    whole = dict((step, loss) for step, loss, _ in losses(tmp_path / "whole"))
    assert all(whole[step] == loss for step, loss, _ in losses(out)), "the resumed losses differ"


def test_a_signal_to_one_process_stops_both_at_the_same_step(dataset_dir, tmp_path):
    out = tmp_path / "stopped"
    launcher = start_launch("train", *SHORT, "--steps", "2000", "--save-every", "10", "--eval-every", "0",
                            "--data", str(dataset_dir), "--out", str(out), "--mesh", "data=2")
    try:
        wait_for(out / "checkpoints" / "10", launcher)
        child_of_rank(launcher.pid, 1).send_signal(signal.SIGINT)  # only rank 1 hears it
        try:
            stdout, stderr = launcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the processes hung: a stop that reaches one process must stop every process at the same "
                        "step (train.py's loop agrees on it with sharding.any_process)")
    finally:
        stop_all(launcher)
    assert launcher.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "signal" and summary["steps"] < 2000
    assert load_run(out).step == summary["steps"]
    assert "[0] stopped by" in stdout


def test_the_quick_session_trains_as_two_processes(tmp_path):
    """`make session-quick PROCESSES=2`, scaled down: its train step runs through the launcher and
    the record says so; every other step (and the evaluation of the 2-process checkpoint) stays here."""
    previous = os.getcwd()
    os.chdir(tmp_path)  # the session writes data/, runs/ and sessions/ where it runs
    try:
        assert session_main(["quick", "--steps", "60", "--data-mb", "0.2", "--processes", "2"]) == 0
    finally:
        os.chdir(previous)
    (record_path,) = (tmp_path / "sessions").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "passed" and record["arguments"]["processes"] == 2
    train = record["metrics"]["train"]
    assert train["processes"] == 2 and train["steps"] == 60
    assert "[0] " in (tmp_path / "sessions" / f"{record_path.stem}.log").read_text()
