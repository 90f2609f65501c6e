"""Typed configs of the planners (configs/planner/{offline,llm}.yaml extend `PlannerConfig`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vplan.chat import REDACTED, ChatEndpointConfig
from vplan.utils.settings import check_field_types

KINDS = ("offline", "llm")
RESPONSE_FORMATS = ("json_schema", "json_object", "none")  # what the LLM planner's request asks for
SECRET_FIELDS = ("api_key",)  # never logged, printed or written to a run directory
URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s]*@", re.IGNORECASE)  # up to the host's last "@"
# a URL's query parameter that carries a key (Azure's ?api-key=, ?token=, ?sig=, ...)
URL_SECRET_PARAMETER = re.compile(
    r"([?&](?:[^=&#\s]*[-_])?(?:api-?key|key|token|secret|password|sig|signature)=)[^&#\s]*", re.IGNORECASE)


LLM_ENDPOINT = ("planner=llm", "planner.llm.api_key")  # how messages name the planner's endpoint and its key


@dataclass
class LLMPlannerConfig(ChatEndpointConfig):
    """How the LLM planner reaches an OpenAI-compatible endpoint (`ChatEndpointConfig`) and checks its reply."""

    send_image: bool = field(
        default=False, metadata={"help": "Send the first frame as a base64 PNG (needs a vision model)."}
    )
    response_format: str = field(
        default="json_schema",
        metadata={"help": f"Structured output asked of the endpoint: one of {RESPONSE_FORMATS} (json_object: JSON "
                  "without the schema, for endpoints that take no other; none: not asked; the reply is checked "
                  "the same either way)."},
    )
    max_subgoals: int = field(
        default=32, metadata={"help": "Longest plan accepted from the LLM (a blockworld path of 32 chunks plans 33: "
                              "raise it there; a run records it, so a resume keeps it)."}
    )
    max_text_chars: int = field(default=120, metadata={"help": "Longest subgoal text accepted from the LLM."})
    max_reply_chars: int = field(default=16000, metadata={"help": "Longest reply parsed at all."})
    grounding_threshold: float = field(
        default=0.8,
        metadata={"help": "Least cosine similarity (MiniLM mean-pooled) between a reply's subgoal and the skill "
                  "it is grounded to; below it the reply is rejected. A subgoal must also have the skill's words "
                  "(README), whatever the threshold: lowering it admits no other wording."},
    )
    text_encoder_path: str | None = field(
        default=None,
        metadata={"help": "Local all-MiniLM-L6-v2 directory for grounding; None: the installed package's files."},
    )
    fallback: bool = field(
        default=True,
        metadata={"help": "On a failed request or a reply refused, plan offline with a warning; false: stop the "
                  "command (exit 1) instead, so that no figure mixes offline plans in."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format: expected one of {RESPONSE_FORMATS}, got {self.response_format!r}")
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
        check_field_types(self)
        if not isinstance(self.llm, LLMPlannerConfig):  # a dict from Python (Hydra gives the dataclass)
            raise ValueError(f"llm: expected an LLMPlannerConfig, got {type(self.llm).__name__}")
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
    if isinstance(tree, str):  # a URL's user:password (https://user:pw@host/v1) or ?api-key=, e.g. in base_url
        return URL_SECRET_PARAMETER.sub(rf"\1{REDACTED}", URL_CREDENTIALS.sub(rf"\1{REDACTED}@", tree))
    return tree
