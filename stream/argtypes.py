"""Argument types shared by the command-line subcommands: each refuses a bad value with one clear line."""
from __future__ import annotations

import argparse


def positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not an integer") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return n


def non_negative(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return n


def port(v: str) -> int:
    n = positive(v)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"{v} is not a TCP port")
    return n
