"""Helpers shared by the command-line tools in ``tools/``."""

from __future__ import annotations

import argparse
from pathlib import Path

# Where build_repo writes a repository unless told otherwise, and where serve and bench look.
DEFAULT_REPOSITORY = Path("build/model_repository")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: ...)`` only where there is a default worth showing, and keeps the
    description's line breaks (its usage examples)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if hidden or action.help is None:
            return action.help
        return super()._get_help_string(action)


def positive_float(text: str) -> float:
    """An ``argparse`` type: a number greater than 0, else a one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value
