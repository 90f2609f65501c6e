"""Fake of gym/utils/__init__.py (openai/gym 0.19.0)."""
