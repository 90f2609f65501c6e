"""vplan: plan and act with a video world model."""

__version__ = "0.1.0"
