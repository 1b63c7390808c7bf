"""The parser of the ``frcnn`` command and its entry point."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import engine
from ..data import DatasetError
from . import anchors, data, detect, evaluate, export, train
from .common import HelpFormatter

COMMANDS = {"train": train, "eval": evaluate, "detect": detect, "anchors": anchors, "data": data, "export": export}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frcnn", formatter_class=HelpFormatter,
        description="Faster R-CNN: train a detector, evaluate it, run it on images, and look at the "
                    "anchor target layer.",
        epilog="Run 'frcnn COMMAND --help' for a command's options. 'frcnn train' with no options trains "
               "on the embedded synthetic data and prints the metrics.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error (default: one line)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands, common)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    expected = (ValueError, OSError, engine.TrainingError, DatasetError)
    return message if isinstance(error, expected) else f"{type(error).__name__}: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status: 0 done, 1 error, 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = "; --resume continues from the last checkpoint in --out" if args.command == "train" else ""
        print(f"frcnn {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as error:  # every error ends as one line unless --debug
        if args.debug:
            raise
        print(f"frcnn {args.command}: error: {_one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
