"""Helpers shared by the command-line tools in ``tools/``: defaults, help, exit codes, progress.

Every tool is ``main(argv=None) -> int`` and ends in ``raise SystemExit(main())``; the same
kind of failure gives the same exit code in every tool (:class:`ExitCode`), and each tool's
``--help`` lists them (:data:`EXIT_CODES_HELP`). Example::

    except BlsPipelineError as exc:
        return report_error("classify", exc)      # "classify: error: ..." on stderr, code 3 or 4
"""

from __future__ import annotations

import argparse
import sys
from enum import IntEnum
from typing import TextIO

from tqdm import tqdm

from bls_pipeline.client import ClientError
from bls_pipeline.errors import ServerError


class ExitCode(IntEnum):
    """What a tool's exit status means, the same in every tool."""

    OK = 0
    FAILED = 1
    """The run finished, but some of its work failed (a file not classified, a soak outcome
    that was not expected); the output says which."""
    USAGE = 2
    """The command line is wrong (argparse's own code): an unknown flag, a value out of range."""
    INPUT = 3
    """Something the command line names is unusable: a missing path, a checkpoint of the wrong
    layout, a non-empty ``--output`` without ``--force``."""
    SERVER = 4
    """The Triton server cannot be started, reached, or used (model not ready, died)."""
    INTERRUPTED = 130
    """Ctrl-C: 128 + SIGINT, as shells report a process killed by it."""


EXIT_CODES_HELP = (
    f"exit codes: {ExitCode.OK} success; {ExitCode.FAILED} some of the work failed (the output says which); "
    f"{ExitCode.USAGE} usage error; {ExitCode.INPUT} an input named on the command line is unusable; "
    f"{ExitCode.SERVER} the server cannot be started, reached or used; {ExitCode.INTERRUPTED} interrupted."
)
"""One paragraph for every tool's ``--help`` epilog."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: ...)`` only where there is a default worth showing and the help does not
    already say it, and keeps the description's line breaks (its usage examples)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        empty = action.default is None or action.default is False or action.default in ((), [])
        if empty or action.default == argparse.SUPPRESS or action.help is None or "default:" in action.help:
            return action.help
        return super()._get_help_string(action)


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code of a failure of this kind: the server's fault, or the input's."""
    if isinstance(error, (ServerError, ClientError)):
        return ExitCode.SERVER
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.INPUT


def report_error(prog: str, error: BaseException | str, code: ExitCode | None = None) -> int:
    """Print ``<prog>: error: <error>`` as one line on stderr and return the exit code.

    ``code`` defaults to :func:`exit_code_for` the exception (a plain message: ``INPUT``).
    """
    message = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
    if code is None:
        code = exit_code_for(error) if isinstance(error, BaseException) else ExitCode.INPUT
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return int(code)


def progress_bar(total: int, unit: str, *, stream: TextIO | None = None) -> tqdm:
    """A progress bar on ``stream`` (default stderr), drawn only when it is a terminal.

    Piped or redirected output (CI logs, ``2> file``) stays free of carriage-return frames.
    """
    stream = sys.stderr if stream is None else stream
    return tqdm(total=total, unit=unit, file=stream, disable=not stream.isatty(), dynamic_ncols=True, leave=False)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 1, else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type: a number greater than 0, else a one-line usage error."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An ``argparse`` type: a number of at least 0, else a one-line usage error."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value
