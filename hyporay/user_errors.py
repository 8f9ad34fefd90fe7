"""User errors on the command line, shared by `hyporay` and the sweep scripts: one line each (a usage error, a bad
config or flag, a missing file), exit status 2, no traceback; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

# User errors: bad config or flag (ValueError and its subclasses ConfigError, DatasetUnavailable,
# TrackingError), missing files. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ...; see prog --help``), exit status 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_user_command(fn: Callable[[], int], prog: str) -> int:
    """Run ``fn``; turn user errors into one line on stderr and exit status 2 (HYPORAY_DEBUG=1: traceback)."""
    try:
        return fn()
    except USER_ERRORS as exc:
        if os.environ.get("HYPORAY_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` & co.
        sys.stderr.close()
        return 0
