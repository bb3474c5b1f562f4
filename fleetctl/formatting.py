"""What every ``fleet`` subcommand's help shares."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODELS = Path("models")

Subparsers = argparse._SubParsersAction  # the type ``add_subparsers`` returns


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default unless its help already says it, or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            text += " (default: %(default)s)"
        return text


__all__ = ["DEFAULT_MODELS", "HelpFormatter", "Subparsers"]
