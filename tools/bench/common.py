"""What every benchmark's entry point does: stop cleanly on SIGTERM or Ctrl-C, and
turn a failure into one line on stderr and an exit code."""

from __future__ import annotations

import signal
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


def run_interruptibly(name: str, work: Callable[[], T], errors: tuple[type[Exception], ...], servers: str) -> tuple[T | None, int]:
    """Run work() and return (its result, 0), or (None, exit code) after printing why.

    SIGTERM becomes SIGINT, which trio and asyncio turn into KeyboardInterrupt at a
    safe point, so the run unwinds and stops its servers, even when it was started
    with SIGINT ignored. Out of trio, errors may come wrapped in an exception group."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    message, code = "", 0
    try:
        return work(), 0
    except* errors as group:
        message, code = str(group.exceptions[0]), 1
    except* KeyboardInterrupt:
        message, code = f"interrupted; {servers} stopped", 130
    print(f"{name}: {message}", file=sys.stderr)
    return None, code
