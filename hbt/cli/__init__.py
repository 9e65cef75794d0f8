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


class DefaultCommandGroup(click.Group):
    """A group that runs ``default`` when the first argument names no command: ``hbt-search "question"``."""

    def __init__(self, *args, default: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


def runtime_option(what: str):
    """--runtime: onnxruntime (the bundle's model.onnx) or openvino (what hbt-export --openvino adds)."""
    return click.option("--runtime", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime",
                        show_default=True, help=f"Encoder runtime {what}; openvino (pip install 'hbt[openvino]') needs "
                                                "a bundle exported with --openvino, and is the faster in batches.")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
