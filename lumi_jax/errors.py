"""User mistakes: one clear line, exit status 2, no traceback.

Code anywhere in lumi_jax raises `UserError("what is wrong; how to fix it")` for a mistake the
user can correct (a bad config, a missing file, a mismatched tokenizer). The command-line entry
points catch it with `exit_on_user_error`, print the one line, and exit with status 2. Bugs stay
ordinary exceptions, with their tracebacks, so they are not mistaken for user mistakes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

USER_ERROR_EXIT_STATUS = 2


class UserError(Exception):
    """A mistake the user can fix; the message names the problem and the fix."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a UserError into `error: MESSAGE` on stderr and exit status 2."""
    try:
        yield
    except UserError as error:
        message = " ".join(str(error).split())  # always exactly one line
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_STATUS) from None
