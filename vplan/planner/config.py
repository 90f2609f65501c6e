"""Typed configs of the planners (configs/planner/{offline,llm}.yaml extend `PlannerConfig`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("offline", "llm")
SECRET_FIELDS = ("api_key",)  # never logged, printed or written to a run directory
REDACTED = "<redacted>"


@dataclass
class LLMPlannerConfig:
    """How the LLM planner reaches an OpenAI-compatible endpoint and checks its reply."""

    base_url: str | None = field(
        default=None,
        metadata={"help": "The endpoint's base URL, e.g. http://localhost:8000/v1 (vLLM, llama.cpp, Ollama); "
                  "None: the OPENAI_BASE_URL environment variable, else OpenAI's API."},
    )
    model: str = field(default="gpt-4o-mini", metadata={"help": "Model name sent to the endpoint."})
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "API key; None: read the environment variable `api_key_env`. Never logged."},
    )
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the key."})
    timeout_s: float = field(default=30.0, metadata={"help": "Seconds per HTTP request (the client's timeout)."})
    max_retries: int = field(
        default=2, metadata={"help": "Retries of a failed request (connection errors, timeouts, 408/409/429/5xx)."}
    )
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (0: near-deterministic)."})
    send_image: bool = field(
        default=False, metadata={"help": "Send the first frame as a base64 PNG (needs a vision model)."}
    )
    max_subgoals: int = field(default=32, metadata={"help": "Longest plan accepted from the LLM."})
    max_text_chars: int = field(default=120, metadata={"help": "Longest subgoal text accepted from the LLM."})
    max_reply_chars: int = field(default=16000, metadata={"help": "Longest reply parsed at all."})
    grounding_threshold: float = field(
        default=0.8,
        metadata={"help": "Least cosine similarity (MiniLM mean-pooled) between a reply's subgoal and the skill "
                  "it is grounded to; below it the reply is rejected."},
    )
    text_encoder_path: str | None = field(
        default=None,
        metadata={"help": "Local all-MiniLM-L6-v2 directory for grounding; None: the installed package's files."},
    )

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError(f"model: expected a non-empty model name, got {self.model!r}")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http:// or https:// URL or None, got {self.base_url!r}")
        if not self.api_key_env.strip():
            raise ValueError(f"api_key_env: expected an environment variable name, got {self.api_key_env!r}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s: expected a positive number of seconds, got {self.timeout_s!r}")
        if not 0 <= self.max_retries <= 10:
            raise ValueError(f"max_retries: expected an int in [0, 10], got {self.max_retries!r}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature: expected a float in [0, 2], got {self.temperature!r}")
        if not 1 <= self.max_subgoals <= 256:
            raise ValueError(f"max_subgoals: expected an int in [1, 256], got {self.max_subgoals!r}")
        if not 1 <= self.max_text_chars <= 200:
            raise ValueError(f"max_text_chars: expected an int in [1, 200], got {self.max_text_chars!r}")
        if self.max_reply_chars < 2:
            raise ValueError(f"max_reply_chars: expected an int >= 2, got {self.max_reply_chars!r}")
        if not -1 <= self.grounding_threshold <= 1:
            raise ValueError(f"grounding_threshold: expected a cosine in [-1, 1], got {self.grounding_threshold!r}")


@dataclass
class PlannerConfig:
    """Which planner splits the task into subgoals, and how long a chunk is."""

    kind: str = field(default="offline", metadata={"help": f"One of {KINDS}."})
    chunk_frames: int = field(
        default=8, metadata={"help": "Frames per world-model chunk (the world model's chunk_frames; 8 at 10 Hz)."}
    )
    max_chunks_per_subgoal: int = field(
        default=16,
        metadata={"help": "Cap on a subgoal's estimated chunks (a tabletop skill takes 1-3; retrace's way back "
                  "takes path_chunks + 2, 8 by default)."},
    )
    chunk_offset: int = field(
        default=0,
        metadata={"help": "Chunks added to (or, negative, taken from) every subgoal's estimate, at least 1 each; "
                  "`vplan rl` tunes it (see its planner.yaml)."},
    )
    llm: LLMPlannerConfig = field(default_factory=LLMPlannerConfig, metadata={"help": "kind=llm settings."})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames: expected a positive int, got {self.chunk_frames!r}")
        if self.max_chunks_per_subgoal < 1:
            raise ValueError(f"max_chunks_per_subgoal: expected a positive int, got {self.max_chunks_per_subgoal!r}")


def redact_secrets(tree: Any) -> Any:
    """A copy of a nested dict/list (a config as a container) with every `SECRET_FIELDS` value replaced.

    Whoever writes a resolved config (a run directory) passes it through this first.
    """
    if isinstance(tree, Mapping):
        return {k: (REDACTED if k in SECRET_FIELDS and v is not None else redact_secrets(v)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [redact_secrets(v) for v in tree]
    return tree
