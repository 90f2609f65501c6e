"""Ground free subgoal texts to the skills the world model knows (MiniLM sentence embeddings).

A text is grounded to a skill when (1) it has the skill's words — case, order, the words in `FILLER_WORDS`, a
leading step number ("1.", "Step 2:") and a closing ".", "!" or "?" aside; each as often as the skill says it
— and no other character than letters, digits, spaces and those of the skills' own texts, and (2) its
embedding's cosine similarity to the skill's text is at least the threshold.
Embeddings are all-MiniLM-L6-v2's mean-pooled, L2-normalised token states (sentence-transformers' recipe)
from the world model's offline text encoder (vplan/worldmodel/text_encoder.py). A grounded subgoal takes the
skill's own text: nothing of the reply's wording reaches the world model.

Why the words, and not similarity alone: mean-pooled MiniLM scores a word that inverts, negates, repeats or
joins a step as it scores a paraphrase. Measured similarity to the nearest skill: "grasp the red cube" 0.86,
"drop the red cube" 0.885 (to the pick), "you shouldn't pick up the red cube" 0.90, "place the red cube away
from the left spot" 0.975 (to "... on the left spot"), "pick up the blue cube and place it on the left spot"
0.97 (to the place alone), "... twice" 0.96, "pick up the red cube: place it on the left spot" 0.95; and
"place the red cube on the left spot" vs "... right spot" 0.99. No threshold keeps the paraphrase and refuses
the rest, so a subgoal that silently drops, inverts or repeats a step grounds to nothing and the planner falls
back; the request asks for the skills' texts exactly. With the words equal the similarity is high even in a
scrambled order ("the red cube up pick" 0.91, "Pick up the red cube." 0.985), so the threshold (0.8 by default)
refuses only what a stricter setting asks; where no skill has a text's words, the most similar one is named.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import torch

from vplan.planner.skills import Skill

ENCODER_MAX_TOKENS = 64  # word pieces per text, truncated beyond (skills take ~10; replies at most 200 chars)
# Words a subgoal may add to or leave out of its skill's text: they change no step.
FILLER_WORDS = frozenset({"the", "a", "an", "it", "its", "again", "step", "please", "now"})
STEP_NUMBER = re.compile(r"\s*(?:step\s*)?\(?\d+[.):]*\s*", re.IGNORECASE)  # "1. ", "2) ", "Step 3: ", "(4) "


class GroundingError(ValueError):
    """A subgoal text matches no skill the world model knows."""


@lru_cache(maxsize=2)
def _encoder(path: str | None):  # noqa: ANN202 - MiniLMTextEncoder, imported lazily (transformers is slow)
    from vplan.worldmodel.config import TextEncoderConfig
    from vplan.worldmodel.text_encoder import MiniLMTextEncoder, resolve_minilm_dir

    resolve_minilm_dir(path, "planner.llm.text_encoder_path")  # a missing copy, named by the planner's setting
    return MiniLMTextEncoder(TextEncoderConfig(kind="minilm", path=path, max_tokens=ENCODER_MAX_TOKENS))


def _without_step_number(text: str) -> str:
    match = STEP_NUMBER.match(text)
    return text[match.end():] if match else text


def _content_words(text: str) -> Counter[str]:
    """The words that say what a text does, each as often as it says it ("... twice" in words is a repeat)."""
    return Counter(word for word in re.findall(r"[a-z0-9]+", text.lower()) if word not in FILLER_WORDS)


def _marks(text: str) -> set[str]:
    return set(re.sub(r"[A-Za-z0-9 ]", "", text))


class SkillGrounder:
    """Maps texts to the skill with the same words, if similar enough, or raises `GroundingError`."""

    def __init__(self, threshold: float, encoder_path: str | None = None) -> None:
        self.threshold = threshold
        self.encoder = _encoder(encoder_path)  # loaded once per process and path

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, 384) unit vectors: mean of the token states over the real tokens."""
        states, mask = self.encoder(list(texts))
        pooled = states.float().sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    def ground(self, texts: Sequence[str], skills: Sequence[Skill]) -> list[tuple[Skill, float]]:
        """For each text, its skill and the similarity; GroundingError names the first text that fails."""
        if not skills:
            raise GroundingError("no skills to ground to")
        bodies = [_without_step_number(text).strip().removesuffix("?").removesuffix("!").removesuffix(".")
                  for text in texts]
        similarity = self.embed(bodies) @ self.embed([s.text for s in skills]).T
        skill_words = [_content_words(skill.text) for skill in skills]
        own_marks = set().union(*(_marks(skill.text) for skill in skills))  # a scene's "light-blue" cube
        grounded = []
        for row, body in enumerate(bodies):
            marks = sorted(_marks(body) - own_marks)
            if marks:
                raise GroundingError(f"subgoal {row + 1} holds {' '.join(marks)}: expected one skill's text, "
                                     "letters, digits and spaces only (a mark may join two steps)")
            words = _content_words(body)
            matches = [j for j, known in enumerate(skill_words) if known == words]
            if not matches:
                nearest = int(similarity[row].argmax())
                extra = sorted((words - skill_words[nearest]).elements())
                missing = sorted((skill_words[nearest] - words).elements())
                differ = ", ".join([*([f"it has {extra}"] if extra else []),
                                    *([f"not {missing}"] if missing else [])])
                raise GroundingError(f"subgoal {row + 1} is no known skill: unlike the nearest, "
                                     f"{skills[nearest].text!r}, {differ} (a word changed may invert, negate, "
                                     "repeat or join steps)")
            best = max(matches, key=lambda j: float(similarity[row, j]))
            score = float(similarity[row, best])
            if score < self.threshold - 1e-5:  # float32 gives a skill's own text 0.9999998: threshold 1 takes it
                raise GroundingError(
                    f"subgoal {row + 1} is no known skill: it has {skills[best].text!r}'s words, at cosine "
                    f"{score:.2f} < threshold {self.threshold}"
                )
            grounded.append((skills[best], score))
        return grounded
