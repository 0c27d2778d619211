"""Argument types of the `alignlab` command line: each value checked, argparse's one-line error otherwise."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type, lowest, highest=None, what: str = ""):
    """`text` as a finite `kind` in [lowest, highest], or argparse's error naming the valid range."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < lowest or (highest is not None and value > highest):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, 1, what="a positive integer")


def count(text: str) -> int:
    return _number(text, int, 0, what="an integer >= 0")


def seed(text: str) -> int:
    return _number(text, int, 0, 2**64 - 1, what="a seed in [0, 2^64 - 1]")


def temperature(text: str) -> float:
    return _number(text, float, 0.0, what="a finite temperature >= 0 (0 = greedy)")
