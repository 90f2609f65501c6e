"""Fake of gym/logger.py (openai/gym 0.19.0)."""

import warnings


def info(msg, *args):
    pass


def warn(msg, *args):
    warnings.warn(msg % args if args else msg)
