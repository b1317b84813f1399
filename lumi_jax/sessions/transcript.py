"""The session log: everything shown on the terminal, kept as plain text.

A session is one process, and the stages it drives (data, training, evaluation) print through
their own rich consoles, progress bars and warnings. Rather than ask each of them to print
through a session console, `Transcript` replaces `sys.stdout` and `sys.stderr` with tees: the
terminal sees exactly what it saw before (colours, live progress), and a small screen model
turns the same stream into the plain text a reader would see once the output settles.

The screen model matters because live displays redraw themselves: rich's progress bar moves the
cursor up and erases lines several times a second. Written verbatim, a 30-minute session would
leave thousands of frames in the log; replayed on `LogScreen`, it leaves the final frame only.
Only the lines near the bottom can still change, so older lines are committed to the file and
the file's tail is rewritten at most once a second (and at every step boundary), which keeps
the log on disk current even if the process dies.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from typing import IO, TextIO

# CSI sequences (cursor moves, erases, colours), OSC sequences (hyperlinks, titles), and the
# two-character escapes; everything a terminal consumes without printing.
_ESCAPE = re.compile(
    r"\x1b\[(?P<params>[0-9;?]*)(?P<command>[@-~])"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[()][0-9A-Za-z]"
    r"|\x1b[@-Z\\-_]"
)

# How many of the last lines may still be redrawn. Rich's live displays are a few dozen lines at
# most; anything older is final and goes to the file for good.
_MUTABLE_LINES = 400
_FLUSH_INTERVAL_S = 1.0


class LogScreen:
    """A minimal terminal: text, newline, carriage return, cursor up/down, erase in line."""

    def __init__(self) -> None:
        self.committed: list[str] = []  # final lines, not yet handed to the file
        self.lines: list[str] = [""]  # the bottom of the screen, which can still change
        self.row = 0  # cursor position within self.lines
        self.col = 0

    def feed(self, text: str) -> None:
        position = 0
        for match in _ESCAPE.finditer(text):
            self._print(text[position:match.start()])
            if match.group("command"):
                self._control(match.group("command"), match.group("params"))
            position = match.end()
        self._print(text[position:])
        self._commit_old_lines()

    def _print(self, text: str) -> None:
        for piece in re.split(r"([\n\r\b])", text):
            if piece == "\n":
                self._move_to_row(self.row + 1)
                self.col = 0
            elif piece == "\r":
                self.col = 0
            elif piece == "\b":
                self.col = max(0, self.col - 1)
            elif piece:
                line = self.lines[self.row].ljust(self.col)
                self.lines[self.row] = line[:self.col] + piece + line[self.col + len(piece):]
                self.col += len(piece)

    def _control(self, command: str, params: str) -> None:
        count = int(params) if params.isdigit() else None
        if command == "A":  # cursor up
            self._move_to_row(max(0, self.row - (count or 1)))
        elif command == "B":  # cursor down
            self._move_to_row(self.row + (count or 1))
        elif command == "G":  # cursor to column (1-based)
            self.col = max(0, (count or 1) - 1)
        elif command == "K":  # erase in line: 0 to the end, 1 to the start, 2 all
            line = self.lines[self.row]
            if count == 2:
                self.lines[self.row] = ""
            elif count == 1:
                self.lines[self.row] = " " * self.col + line[self.col:]
            else:
                self.lines[self.row] = line[:self.col]
        # Colours (m), cursor visibility (?25l) and the rest do not change the text.

    def _move_to_row(self, row: int) -> None:
        while row >= len(self.lines):
            self.lines.append("")
        self.row = row

    def _commit_old_lines(self) -> None:
        excess = len(self.lines) - _MUTABLE_LINES
        if excess > 0 and self.row >= excess:
            self.committed.extend(line.rstrip() for line in self.lines[:excess])
            del self.lines[:excess]
            self.row -= excess

    def pending_text(self) -> str:
        """The mutable lines as they stand; erased lines at the bottom are dropped."""
        visible = [line.rstrip() for line in self.lines]
        while visible and not visible[-1]:
            visible.pop()
        return "".join(line + "\n" for line in visible)

    def take_committed(self) -> str:
        text = "".join(line + "\n" for line in self.committed)
        self.committed = []
        return text


class _Tee:
    """Stands in for sys.stdout or sys.stderr: writes go to the terminal and to the transcript."""

    def __init__(self, stream: TextIO, transcript: Transcript) -> None:
        self._stream = stream
        self._transcript = transcript

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._transcript.feed(text)
        return written

    def flush(self) -> None:
        self._stream.flush()
        self._transcript.flush()

    def isatty(self) -> bool:  # rich decides on colours and live display from this
        return self._stream.isatty()

    def __getattr__(self, name: str):  # fileno, encoding, errors, buffer, ...
        return getattr(self._stream, name)


class Transcript:
    """Tee stdout and stderr into `path` as plain text for the duration of a `with` block."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._screen = LogScreen()
        self._lock = threading.RLock()
        self._file: IO[str] | None = None
        self._committed_offset = 0
        self._last_flush = 0.0
        self._saved: tuple[TextIO, TextIO] | None = None

    def __enter__(self) -> Transcript:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "x", encoding="utf-8")  # a new log never replaces an old one
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self)
        sys.stderr = _Tee(sys.stderr, self)
        return self

    def __exit__(self, *exc_info) -> None:
        assert self._saved is not None and self._file is not None
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._saved
        self.flush(force=True)
        self._file.close()
        self._file = None

    def feed(self, text: str) -> None:
        with self._lock:
            self._screen.feed(text)
        self.flush()

    def write_only_to_log(self, text: str) -> None:
        """Add text to the log without showing it (for example a traceback already summarised)."""
        with self._lock:
            self._screen.feed(text)
        self.flush(force=True)

    def flush(self, force: bool = False) -> None:
        with self._lock:
            if self._file is None:
                return
            now = time.monotonic()
            if not force and now - self._last_flush < _FLUSH_INTERVAL_S:
                return
            self._last_flush = now
            committed = self._screen.take_committed()
            self._file.seek(self._committed_offset)
            self._file.truncate()
            if committed:
                self._file.write(committed)
                self._committed_offset = self._file.tell()
            self._file.write(self._screen.pending_text())
            self._file.flush()
