"""Fake of gym/error.py (openai/gym 0.19.0): the exception classes the fake uses."""


class Error(Exception):
    pass


class UnregisteredEnv(Error):
    pass
