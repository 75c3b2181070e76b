"""What `python -m llama_tf` and `python -m llama_tf.train` share: every bad input is one `error:` line.

`ArgumentParser` prints an argument error as one line (no usage block; `--help` has it), `number` is an
argparse type for bounded finite numbers, and `run` turns llama_tf's errors (a `ValueError` or an
`OSError` naming the file) into one line and exit status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

__all__ = ["ArgumentParser", "number", "run"]


class ArgumentParser(argparse.ArgumentParser):
    def add_argument(self, *args, **kwargs):
        "As argparse's, and `--help` states the option's default unless its help text already does."
        action = super().add_argument(*args, **kwargs)
        shown = action.default is not None and action.default is not False and action.default != [] \
            and action.default is not argparse.SUPPRESS
        if action.option_strings and shown and "default" not in (action.help or ""):
            action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"
        return action

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (--help shows the options)\n")


def number(kind: type, minimum: float | None = None, maximum: float | None = None, above: float | None = None,
           below: float | None = None) -> Callable[[str], float]:
    "An argparse type: a finite `kind` within the bounds given (`minimum`/`maximum` inclusive, `above`/`below` not)."
    bounds = [(f">= {minimum}", lambda v: v >= minimum) if minimum is not None else None,
              (f"> {above}", lambda v: v > above) if above is not None else None,
              (f"<= {maximum}", lambda v: v <= maximum) if maximum is not None else None,
              (f"< {below}", lambda v: v < below) if below is not None else None]
    bounds = [b for b in bounds if b]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if not math.isfinite(value) or not all(holds(value) for _, holds in bounds):
            raise argparse.ArgumentTypeError(f"must be {' and '.join(b for b, _ in bounds) or 'finite'}, got {text}")
        return value

    parse.__name__ = kind.__name__   # argparse names the type in its messages
    return parse


def run(command: Callable[[], int | None]) -> int:
    "Runs `command`; a bad input (a missing or malformed file, an impossible setting) is one `error:` line."
    try:
        return command() or 0
    except (OSError, ValueError) as e:   # FileNotFoundError, CheckpointError, TokenizerError, bad settings
        print(f"error: {e}", file=sys.stderr)
        return 1
