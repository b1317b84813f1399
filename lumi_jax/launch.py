"""`lumi launch`: one lumi command as N processes on this machine, joined through jax.distributed.

    lumi launch --processes 2 -- train --model micro --data data/quick --out runs/mh --mesh data=2

starts `python -m lumi_jax.cli train ...` twice, each with the variables a host of a multi-host
job has (`sharding.initialize_distributed` reads them):

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT   a free local port; process 0 serves it
    JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i    which of the N this one is
    XLA_FLAGS=--xla_force_host_platform_device_count=M   M CPU devices in each (default 1)
    JAX_PLATFORMS=cpu                        unless the machine has GPUs enough to give each
                                             process its own share (CUDA_VISIBLE_DEVICES)

It is for trying and testing the multi-host path on one machine, as `torchrun --standalone` is
for PyTorch; on a cluster run the same command on every host (docs/scaling.md). What it adds:

- every line a process prints is prefixed with its rank: `[1] ...`;
- the first process to fail stops the others (SIGTERM, then SIGKILL after `--grace` seconds:
  a survivor is often blocked in a collective with the dead one) and the launcher exits non-zero
  with one line naming the rank and its last error line;
- Ctrl-C (SIGINT) and SIGTERM are forwarded to every process, so they finish the step, save
  together and exit as one run does (a second one means "quit now", as for one process; a third
  kills them). The processes run in their own session, so the terminal's Ctrl-C reaches them
  only through the launcher, and they are killed if the launcher itself dies (Linux).

Exit status: 0 when every process exits 0; else the first failure's status (128 + the signal
for a process killed by one), or 124 when `launch(timeout_s=...)` had to stop them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from lumi_jax.errors import UserError
from lumi_jax.flags import positive_whole_number, whole_number

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")
TIMEOUT_STATUS = 124  # as timeout(1)
ERROR_WORDS = re.compile(r"error|exception|fatal|abort|failed", re.IGNORECASE)


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def visible_gpus() -> list[str]:
    """The GPUs JAX could use here (CUDA_VISIBLE_DEVICES, or `nvidia-smi -L`), without starting JAX;
    none when JAX has no CUDA plugin installed."""
    if not any(importlib.util.find_spec(name) for name in CUDA_PLUGINS):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(index) for index, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def child_environments(processes: int, devices_per_process: int | None, port: int,
                       base: dict[str, str] | None = None) -> tuple[list[dict[str, str]], str]:
    """The environment of each process, and a word on where they run ("cpu" or "gpu")."""
    base = dict(os.environ if base is None else base)
    platforms = base.get("JAX_PLATFORMS", "")
    gpus = [] if platforms == "cpu" else visible_gpus()
    use_gpus = bool(gpus) and len(gpus) % processes == 0 and (platforms == "" or "cuda" in platforms or "gpu" in platforms)
    if use_gpus:
        share = len(gpus) // processes
        if devices_per_process not in (None, share):
            raise UserError(f"lumi launch: {len(gpus)} GPUs give each of {processes} processes {share}, not "
                            f"{devices_per_process}; drop --devices-per-process, or set JAX_PLATFORMS=cpu for "
                            "simulated CPU devices")
    environments = []
    for rank in range(processes):
        env = dict(base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                   JAX_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1")
        if use_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[rank * share:(rank + 1) * share])
        else:
            flags = [flag for flag in base.get("XLA_FLAGS", "").split() if not flag.startswith(DEVICE_COUNT_FLAG)]
            env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_COUNT_FLAG}={devices_per_process or 1}"])
            env["JAX_PLATFORMS"] = "cpu"
        environments.append(env)
    return environments, "gpu" if use_gpus else "cpu"


# Linux: each process first arms PR_SET_PDEATHSIG (SIGKILL when the launcher dies), then becomes
# the program itself (exec keeps the pid, the environment and the setting). Done in a small
# bootstrap rather than a preexec_fn, which is unsafe in a process with threads (a session's JAX).
DIE_WITH_LAUNCHER = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, int(signal.SIGKILL)); "
                     "os.getppid() == int(sys.argv[1]) or os._exit(1); os.execv(sys.argv[2], sys.argv[2:])")


def child_argv(argv: Sequence[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-c", DIE_WITH_LAUNCHER, str(os.getpid()), *argv]


def describe_status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


class Launch:
    """N child processes, their prefixed output, their exits in order, and the signals to forward."""

    def __init__(self, argv: Sequence[str], environments: list[dict[str, str]], grace_s: float):
        self.grace_s = grace_s
        self.exits: queue.Queue[tuple[int, int]] = queue.Queue()
        self.output_lock = threading.Lock()
        self.last_errors: list[str] = [""] * len(environments)  # the last line that reads as an error
        self.forwarded: list[str] = []
        self.children: list[subprocess.Popen] = []
        for env in environments:
            self.children.append(subprocess.Popen(
                child_argv(argv), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
        self.threads = []
        for rank, child in enumerate(self.children):
            for stream, sink in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
                self.threads.append(threading.Thread(target=self.pump, args=(rank, stream, sink), daemon=True))
            self.threads.append(threading.Thread(target=self.watch, args=(rank, child), daemon=True))
        for thread in self.threads:
            thread.start()

    def pump(self, rank: int, stream, sink) -> None:
        """Copy one stream of one process line by line, prefixed with its rank."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if ERROR_WORDS.search(line) and not line.startswith(("Traceback", " ")):
                self.last_errors[rank] = line.strip()
            with self.output_lock:
                sink.write(f"[{rank}] {line}\n")
                sink.flush()
        stream.close()

    def error_line(self, rank: int) -> str:
        return self.last_errors[rank] or "none (it printed no error)"

    def watch(self, rank: int, child: subprocess.Popen) -> None:
        self.exits.put((rank, child.wait()))

    def forward(self, number: int, _frame=None) -> None:
        """Pass a signal on to every process; the third one kills them (one stuck in a collective
        cannot run its Python signal handler)."""
        self.forwarded.append(signal.Signals(number).name)
        if len(self.forwarded) >= 3:
            print("lumi launch: a third signal; killing every process", file=sys.stderr, flush=True)
            self.signal_all(signal.SIGKILL)
        else:
            self.signal_all(number)

    def signal_all(self, number: int, but: int | None = None) -> None:
        for rank, child in enumerate(self.children):
            if rank != but and child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(number)

    def wait(self, timeout_s: float | None = None) -> tuple[int | None, int]:
        """Wait for every process; returns (the first rank that failed or None, its status). Past
        `timeout_s` every process is stopped and the status is TIMEOUT_STATUS."""
        remaining = len(self.children)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while remaining:
            try:
                rank, code = self.exits.get(timeout=0.2)  # a timeout keeps signal handlers running
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    print(f"lumi launch: the processes are still running after {timeout_s:.0f} s; stopping them",
                          file=sys.stderr, flush=True)
                    self.stop_others(None)
                    return None, TIMEOUT_STATUS
                continue
            remaining -= 1
            if code != 0:
                self.stop_others(rank)
                return rank, code
        return None, 0

    def stop_others(self, failed: int | None) -> None:
        """SIGTERM the others, then SIGKILL whoever is still there after the grace period."""
        self.signal_all(signal.SIGTERM, but=failed)
        deadline = time.monotonic() + self.grace_s
        while any(child.poll() is None for child in self.children) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.signal_all(signal.SIGKILL)
        for child in self.children:
            child.wait()

    def finish_output(self) -> None:
        for thread in self.threads:
            thread.join(timeout=5)


def launch(command: Sequence[str], processes: int, *, devices_per_process: int | None = None,
           port: int = 0, grace_s: float = 10.0, timeout_s: float | None = None) -> int:
    """Run `lumi COMMAND` as `processes` joined processes; returns the exit status (0: all exited 0)."""
    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UserError("lumi launch: no command to run; e.g. lumi launch --processes 2 -- train --model micro ...")
    if command[0] == "launch":
        raise UserError("lumi launch: the command to launch is itself `launch`; give the lumi command to run, e.g. train")
    return launch_argv([sys.executable, "-m", "lumi_jax.cli", *command], processes,
                       devices_per_process=devices_per_process, port=port, grace_s=grace_s,
                       timeout_s=timeout_s, title=f"lumi {' '.join(command)}")


def launch_argv(argv: Sequence[str], processes: int, *, devices_per_process: int | None = None, port: int = 0,
                grace_s: float = 10.0, timeout_s: float | None = None, title: str | None = None) -> int:
    """Run the program `argv` as `processes` joined processes (any program that calls
    jax.distributed.initialize, or lumi's initialize_distributed); returns the exit status
    (TIMEOUT_STATUS when they ran past `timeout_s` and were stopped)."""
    environments, platform = child_environments(processes, devices_per_process, port or free_port())
    devices = (f"{devices_per_process or 1} CPU device(s) each" if platform == "cpu"
               else f"GPUs {', '.join(env['CUDA_VISIBLE_DEVICES'] for env in environments)}")
    print(f"lumi launch: {processes} processes of `{title or ' '.join(argv)}`, {devices}, coordinator "
          f"{environments[0]['JAX_COORDINATOR_ADDRESS']}", file=sys.stderr, flush=True)
    previous = {}
    started = Launch(argv, environments, grace_s)
    try:
        if threading.current_thread() is threading.main_thread():
            previous = {number: signal.signal(number, started.forward) for number in FORWARDED_SIGNALS}
        failed, code = started.wait(timeout_s)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if any(child.poll() is None for child in started.children):  # the launcher itself is failing
            started.signal_all(signal.SIGKILL)
    started.finish_output()
    if failed is None:
        return code
    print(f"lumi launch: process {failed} of {processes} failed ({describe_status(code)}); stopped the others; "
          f"its last error line: {started.error_line(failed)}", file=sys.stderr, flush=True)
    return code if code > 0 else 128 - code


# ---------------------------------------------------------------------------------------------
# `lumi launch`.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "lumi launch --processes N [--devices-per-process M] -- COMMAND ..."
    parser.add_argument("--processes", type=positive_whole_number, required=True,
                        help="how many processes (simulated hosts) to start")
    parser.add_argument("--devices-per-process", type=positive_whole_number,
                        help="CPU devices each process simulates (XLA's host device count); default 1")
    parser.add_argument("--port", type=whole_number, default=0, help="the coordinator's port; default a free one")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds the other processes get to exit after one fails, before SIGKILL (default 10)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the lumi command and its arguments, after --, e.g. -- train --model micro ...")


def run(args: argparse.Namespace) -> int:
    return launch(args.command, args.processes, devices_per_process=args.devices_per_process, port=args.port,
                  grace_s=args.grace)
