"""The ``resnet-parity`` command: one subcommand per tool, each registered by its module."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import bench, check, convert, levels, predict, training_runs, traps
from .command import EXIT_OK, EXIT_USAGE, CliError

# In the order ``resnet-parity --help`` lists them.
COMMANDS = (check, traps, training_runs, bench, convert, predict, levels)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resnet-parity",
        description="d2l's ResNet-18 in PyTorch, Keras and MXNet Gluon: prove they compute the "
                    "same function, layer by layer.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_commands(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"resnet-parity: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `resnet-parity check | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
