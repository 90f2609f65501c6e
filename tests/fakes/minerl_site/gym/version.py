"""Fake of gym/version.py (openai/gym 0.19.0)."""

VERSION = "0.19.0"
