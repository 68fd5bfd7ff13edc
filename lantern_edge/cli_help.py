"""One help format for every command: each flag's help text, then its default, once.

argparse's ArgumentDefaultsHelpFormatter appends "(default: ...)" even when the help already
says what the default means, and prints "(default: None)" for flags whose absence means
"decided elsewhere" (the manifest, the checkpoint). Here a default is appended only when the
help does not state one and there is a value to show; a help that leaves None unexplained is
the help text's bug (tests/test_cli.py checks every flag).
"""

from __future__ import annotations

import argparse


def format_default(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


class HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # `is`, not `in`: a default of 0 equals False but is a value to show
        if ("(default" in text or not action.option_strings or text == argparse.SUPPRESS
                or any(default is v for v in (None, False, argparse.SUPPRESS))):
            return text
        return f"{text} (default: {format_default(default).replace('%', '%%')})"
