"""One writer per run directory: an OS lock on `RUN/.lock`, held for the life of the writer.

    with RunLock(run_dir):        # lumi train, lumi sft, lumi import, the session steps that train
        ...                       # write config.json, checkpoints/, metrics.jsonl, summary.json

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)`: the kernel holds it for the open file, so it dies
with its process: a kill -9 never leaves a stale lock, only a small file the next writer reuses.
A second writer does not wait: it fails at once with one line that names the holder's PID and
command, which the holder writes into the lock file after locking. The same process may take the
lock again (a session step that trains into a run it already holds): the count goes up.

On release the lock file is removed (only if it is still ours), and so are the directories the
lock had to create, if nothing else was written into them: a writer refused for a bad input
leaves the disk as it found it. Readers (generate, evaluate, assess) take no lock; what they write
into a run (eval.json, assess.json) is written atomically and no writer touches it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from lumi_jax.errors import UserError

LOCK_NAME = ".lock"
_HELD: dict[Path, RunLock] = {}  # this process's locks, by resolved run directory: re-entrant


def this_command() -> str:
    """This process's command line as the user typed it: `lumi train ...`, not `.../cli.py train ...`."""
    if not sys.argv or not sys.argv[0]:
        return f"python (PID {os.getpid()})"
    program = Path(sys.argv[0])
    names = {"cli.py": "lumi", "session.py": "python -m lumi_jax.session"}
    name = names.get(program.name, program.name) if program.parent.name == "lumi_jax" else program.name
    return " ".join([name, *sys.argv[1:]])


def describe_holder(text: str) -> str:
    """'PID 1234: lumi train --out runs/x' from the lock file's JSON (or what can be made of it)."""
    try:
        holder = json.loads(text)
        return f"PID {holder['pid']}: {holder['command']}" + (
            f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else "")
    except (json.JSONDecodeError, KeyError, TypeError):
        return "PID unknown: it is still starting"


class RunLock:
    """An exclusive, non-blocking lock on RUN/.lock (see the module docstring)."""

    def __init__(self, run_dir: str | Path, *, command: str | None = None, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command or this_command()
        self.enabled = enabled  # only process 0 of a multi-host job writes, so only it locks
        self.fd: int | None = None
        self.created: list[Path] = []  # directories made for the lock, deepest last
        self.depth = 0
        self.outer: RunLock | None = None  # the lock this process already held, when taken again

    # -- taking it -------------------------------------------------------------------------------

    def acquire(self) -> RunLock:
        if not self.enabled:
            return self
        key = self.run_dir.absolute()
        if key in _HELD:  # this process holds it already
            self.outer = _HELD[key]
            self.outer.depth += 1
            return self
        self._make_directory()
        try:
            while True:
                fd = self._open()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = self._read_holder(fd)
                    os.close(fd)
                    raise UserError(
                        f"{self.run_dir}: another process is writing this run ({holder}); wait for it to "
                        f"finish or stop it, then run again, or choose another --out") from None
                # The file may have been removed (and a new one made) between open and flock by a
                # holder that was finishing: a lock on a removed file guards nothing, so try again.
                if self._still_ours(fd):
                    break
                os.close(fd)
            self.fd = fd
            record = {"pid": os.getpid(), "command": self.command, "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            if self.fd is not None:
                self.path.unlink(missing_ok=True)
                os.close(self.fd)
                self.fd = None
            self._remove_created()
            raise
        self.depth = 1
        _HELD[key] = self
        return self

    def _make_directory(self) -> None:
        """Create the run directory (and missing parents), remembering which, or say why not."""
        missing = []
        for directory in [self.run_dir, *self.run_dir.parents]:
            if directory.exists():
                if not directory.is_dir():
                    raise UserError(f"{directory}: is a file, not a directory; choose another --out "
                                    "(a new or existing run directory)")
                break
            missing.append(directory)
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                continue  # made by someone else meanwhile: not ours to remove
            except OSError as error:
                self._remove_created()
                raise UserError(f"{directory}: cannot create it ({error.strerror}); choose an --out "
                                "where you can write") from None
            self.created.append(directory)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise UserError(f"{self.path}: cannot open the run's lock file ({error.strerror}); check that "
                            f"you can write to {self.run_dir}") from None

    def _still_ours(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _read_holder(fd: int) -> str:
        text = ""
        for _ in range(20):  # the holder writes its PID just after locking: give it a moment
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            if text.endswith("\n"):
                break
            time.sleep(0.05)
        return describe_holder(text)

    # -- giving it back ----------------------------------------------------------------------------

    def release(self) -> None:
        if self.outer is not None:
            outer, self.outer = self.outer, None
            outer.release()
            return
        if not self.enabled or self.fd is None:
            return
        self.depth -= 1
        if self.depth > 0:
            return
        _HELD.pop(self.run_dir.absolute(), None)
        try:
            if self._still_ours(self.fd):
                self.path.unlink(missing_ok=True)  # unlinked while still locked: no one can slip in
        finally:
            os.close(self.fd)
            self.fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        """The directories the lock made, if they hold nothing: a refused writer leaves no trace."""
        for directory in reversed(self.created):
            try:
                directory.rmdir()
            except OSError:
                break  # something was written there: it stays, and so do its parents
        self.created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()


def holds_lock(run_dir: str | Path) -> bool:
    """Does this process hold `run_dir`'s lock?"""
    return Path(run_dir).absolute() in _HELD
