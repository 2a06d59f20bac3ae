"""Wording shared by every command's output."""

from __future__ import annotations

import argparse
import urllib.parse


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 endpoint``, ``2 endpoints``, ``0 endpoints``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form or noun + 's'}"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default: the value in effect, environment included.

    Options whose default is None or False (flags, unset secrets) show none, so a token taken from
    the environment is never printed.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: {_without_password(action.default)})".lstrip()


def _without_password(value: object) -> str:
    """A URL default (``redis://:pw@host``) is shown with its password masked."""
    text = str(value).replace("%", "%%")  # argparse %-formats help strings
    parts = urllib.parse.urlsplit(text) if "://" in text else None
    if parts is None or parts.password is None:
        return text
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
