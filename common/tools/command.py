"""What every ``resnet-parity`` command shares: exit statuses, the one-line user error,
argument types and loading the installed backends.

Each command lives in the tool module it drives (``check``, ``convert``, ``training_runs``,
``bench``, ``traps``) and registers itself with an ``add_commands(subparsers)`` function;
``common.tools.cli`` wires them together. This module imports none of them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..core.backend import BaseBackend
from .registry import BackendUnavailable, canonical_name, get_backend

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2

Log = Callable[[str], None]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def one_line(e: BaseException) -> str:
    """An exception's message folded onto one line (its type name if it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def positive(text: str) -> int:
    """argparse type: a positive integer."""
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def framework_list(text: str) -> list[str]:
    """argparse type: comma-separated framework names or aliases, canonical and deduplicated."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        out = list(dict.fromkeys(canonical_name(n) for n in names))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not out:
        raise argparse.ArgumentTypeError("name at least one framework")
    return out


def progress_log(quiet: bool) -> Log:
    """Progress lines on stderr, or nothing with ``-q``."""
    if quiet:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def load_backends(names: Sequence[str], device: str
                  ) -> tuple[dict[str, BaseBackend], dict[str, str]]:
    """The installed backends that can run on ``device``, and why the others are skipped."""
    backends, skipped = {}, {}
    for name in names:
        try:
            be = get_backend(name)
        except BackendUnavailable as e:
            skipped[name] = str(e)
            continue
        if device not in be.devices():
            skipped[name] = f"{name} sees no GPU here"
            continue
        backends[name] = be
    return backends, skipped
