"""Command-line tools: thin click layers over the library; each imports its stage lazily."""

from __future__ import annotations

import functools
import logging

import click

from hbt.errors import HbtError


class UserError(click.ClickException):
    """An HbtError shown as one line, with exit code 2 and no traceback."""

    exit_code = 2


def user_errors(command):
    """Turn hbt's errors into one-line CLI messages."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HbtError as e:
            raise UserError(str(e)) from e

    return wrapper


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
