"""The VLM-feedback reward: a vision chat model judges whether each imagined chunk shows its subgoal.

The world model can imagine a chunk that reaches its subgoal by cheating physics (a cube that teleports, melts or
vanishes); the env's success flag never sees imagined frames, so a vision-language model is asked, per chunk, one
yes/no question about the subgoal and the objects' motion, with a few of the chunk's frames as base64 PNG images,
at any OpenAI-compatible vision chat endpoint (`openai` client, as the LLM planner uses it). The score of an episode
is the share of chunks answered "yes" among those that got a clear answer.

It is off by default (`VLMRewardConfig.enabled=False`: `score` returns None and sends nothing), as it costs one
request per chunk. Requests have the client's timeout and bounded retries, and each `VLMReward` sends at most
`max_requests` questions (the budget; the client's retries of one question count once). Clear answers are cached
by a sha256 of the frames sent, the question and the model, so a chunk scored twice costs one request. Endpoint
trouble never raises: a reply that is not a clear yes/no (see `parse_yes_no`), an HTTP error after the retries, a
timeout or an exhausted budget gives that chunk no answer (None) and a `VLMRewardWarning`; after
`vplan.chat.FAILURES_BEFORE_GIVING_UP` failed requests in a row the endpoint is asked no more. The API key comes from
the config or the environment variable `api_key_env`, is not in the config's repr, and is scrubbed from every
warning.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vplan.chat import ChatEndpoint, ChatRequestError, image_part, short
from vplan.errors import VLMRewardWarning  # (defined there: the CLI shows each)
from vplan.rl.config import VLM_ENDPOINT, VLMRewardConfig
from vplan.rl.rollout import EpisodeRollout
from vplan.utils.import_utils import require_package

ANSWERS = {"yes": True, "no": False}
CONJUNCTIONS = ("or", "and", "but", "wait")  # words that join the opposite answer to the first ("No - wait, yes")
REVERSALS = ("wait", "actually", "on second thought", "correction")  # the opposite answer may come anywhere after


def parse_yes_no(content: Any) -> bool | None:
    """True for a clear "yes", False for a clear "no", None for anything else.

    The rule: lowercased, the reply's first word (after any punctuation, quotes or markdown) must be "yes" or
    "no", standing as an answer: followed by punctuation, a line break or the end ("No teleporting or melting; ...
    Yes." is no answer "no"); the rest is explanation and is ignored ("Yes, the cube is lifted." is yes, "No - the
    cube vanishes." and "**No**" are no, so is "No" with the explanation on the lines below, "Yes, no teleporting
    or melting." is yes), unless the opposite answer follows joined to it ("yes or no", "Yes and no", "Yes but
    no", "yes/no", "No - wait, yes"), standing alone after it ("No, yes."), or anywhere after a word that takes the
    first back ("No. Actually, yes.", "Yes. On second thought, no."). A reply that is empty, not text, or starts
    with any other word ("maybe", "I think so", "Yeah", "Answer: yes") is unclear.
    """
    if not isinstance(content, str):
        return None
    text = content.lower()
    first = re.match(r"[^a-z]*(yes|no)(?=[^\S\n]*\n|\s*(?:[^a-z\s]|$)|\s+\1\b)", text)
    if first is None:
        return None
    answer, after = ANSWERS[first.group(1)], text[first.end():]
    opposite = "no" if answer else "yes"
    joined = re.match(rf"\s*(?:/|(?:{'|'.join(CONJUNCTIONS)})\b)[^a-z]*{opposite}\b", after)
    alone = re.match(rf"[^a-z]*(?:(?:{'|'.join(CONJUNCTIONS)})[^a-z]+)?{opposite}\b[^a-z]*$", after)
    taken_back = re.search(rf"\b(?:{'|'.join(REVERSALS)})\b.*\b{opposite}\b", after, re.DOTALL)
    return None if joined or alone or taken_back else answer


def pick_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """`count` frames of a (T, H, W, 3) uint8 chunk, evenly spaced from the first to the last (all when T <= count)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[3] != 3:
        raise ValueError(f"frames: expected a uint8 (T >= 1, H, W, 3) array, got {frames.dtype} {frames.shape}")
    if frames.shape[0] <= count:
        return frames
    return frames[np.linspace(0, frames.shape[0] - 1, count).round().astype(int)]


class VLMReward:
    """Share of an episode's chunks that a vision chat model says show their subgoal with plausible motion."""

    name = "vlm"

    def __init__(self, config: VLMRewardConfig) -> None:
        self.config = config
        self.requests_made = 0  # questions sent (each with the client's retries), at most config.max_requests
        self.cache_hits = 0
        self.unanswered_chunks = 0  # in this process: chunks that got no clear answer (each warned)
        self.unscored_episodes = 0  # in this process: episodes that got no VLM score
        self._said_given_up = False  # the endpoint's giving up is warned of once
        self._cache: dict[str, bool] = {}
        self._journal: Path | None = None
        self.endpoint: ChatEndpoint | None = None
        if config.enabled:
            require_package("openai", "llm", hint="or set the VLM reward's enabled=False")
            self.endpoint = ChatEndpoint(config, *VLM_ENDPOINT)

    def state(self) -> dict[str, Any]:
        """What a resumed run must continue from: the questions sent so far (the budget) and the cached answers."""
        return {"requests_made": self.requests_made, "cache": dict(self._cache)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.requests_made, self._cache = int(state["requests_made"]), {k: bool(v) for k, v in state["cache"].items()}

    def keep_journal(self, path: Path) -> None:
        """Note every question in `path` as it is sent and answered, and first take in what the journal holds: a
        run killed between two checkpoints (`state`) spent budget and got answers that it must neither spend nor
        pay for again. Call after `load_state`; `clear_journal` once a checkpoint holds the state."""
        self._journal = path
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the last line, cut by the kill
            self.requests_made = max(self.requests_made, int(row.get("requests_made", 0)))
            if isinstance(row.get("answer"), bool):
                self._cache[row["key"]] = row["answer"]

    def clear_journal(self) -> None:
        if self._journal is not None:
            self._journal.unlink(missing_ok=True)

    def _note(self, row: dict[str, Any]) -> None:
        if self._journal is not None:
            with self._journal.open("a") as file:
                file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        """Release the HTTP client (a later question makes a new one)."""
        if self.endpoint is not None:
            self.endpoint.close()

    def _scrub(self, text: str) -> str:
        return self.endpoint.scrub(text) if self.endpoint is not None else text

    def _warn(self, subgoal: str, what: str, say: bool = True) -> None:
        """Count the chunk of `subgoal` as unanswered and (`say`) warn of it, and why (`what`)."""
        self.unanswered_chunks += 1
        if not say:
            return
        what = self._scrub(" ".join(what.split()))
        warnings.warn(
            f"VLM reward ({self.config.model}): {what[:500]}; no reward for the chunk {short(subgoal, 60)}",
            VLMRewardWarning,
            stacklevel=3,
        )

    def cache_key(self, frames: np.ndarray, question: str) -> str:
        """The sha256 of the frames sent (shape and bytes), the question and the model."""
        digest = hashlib.sha256(json.dumps([self.config.model, question, list(frames.shape)]).encode())
        digest.update(np.ascontiguousarray(frames).tobytes())
        return digest.hexdigest()

    def messages(self, frames: np.ndarray, question: str) -> list[dict[str, Any]]:
        """The chat messages of one question: its text, then the frames as PNG data URLs."""
        content: list[dict[str, Any]] = [{"type": "text", "text": question}]
        content += [image_part(frame) for frame in frames]
        return [{"role": "user", "content": content}]

    def _question(self, frames: np.ndarray, subgoal: str) -> tuple[np.ndarray, str, str]:
        """The frames sent about a chunk, the question asked and its cache key."""
        sent = pick_frames(frames, self.config.frames_per_question)
        question = self.config.question.format(subgoal=subgoal)
        return sent, question, self.cache_key(sent, question)

    def ask(self, frames: np.ndarray, subgoal: str) -> bool | None:
        """The VLM's yes (True) / no (False) on whether `frames` show `subgoal`; None: no clear answer (warned).

        Disabled: None, without a request or a warning.
        """
        if not self.config.enabled:
            return None
        return self._ask(*self._question(frames, subgoal), subgoal)

    def _ask(self, sent: np.ndarray, question: str, key: str, subgoal: str) -> bool | None:
        """`ask` with the chunk's question made (`_question`)."""
        if key in self._cache:
            self.cache_hits += 1
            return self._cache[key]
        if self.requests_made >= self.config.max_requests:
            self._warn(subgoal, f"the request budget ({self.config.max_requests}) is spent")
            return None
        if self.endpoint.given_up:  # said here, before the question spends budget; once (then counted only):
            failed = self.endpoint.failures_in_a_row  # a warning per chunk was ~290 lines an iteration
            self._warn(subgoal, f"the endpoint failed {failed} requests in a row, so it is asked no more in this run "
                                "(the same command resumes the run and asks it again); the chunks left unanswered "
                                "are counted in each iteration's line", say=not self._said_given_up)
            self._said_given_up = True
            return None
        self.requests_made += 1
        self._note({"requests_made": self.requests_made})  # before it is sent: a kill while waiting spent it too
        try:
            content = self.endpoint.complete(self.messages(sent, question))
        except ChatRequestError as error:  # a failed request, a refusal or a cut reply
            self._warn(subgoal, str(error))
            return None
        answer = parse_yes_no(content)
        if answer is None:
            shown = self._scrub(content) if isinstance(content, str) else content  # scrubbed before it is cut
            self._warn(subgoal, f"the reply is not a clear yes or no: {short(shown, 80)}")
            return None
        self._cache[key] = answer
        self._note({"key": key, "answer": answer})
        return answer

    def score(self, rollout: EpisodeRollout) -> float | None:
        """Share of chunks answered yes among those with a clear answer; None when none has one (or disabled), and
        when the request budget left cannot ask about every chunk not in the cache: scored on its first chunks
        alone, an episode would be compared with others scored on all of theirs (the budget runs out part-way
        through a group), so none is asked and its plan's others' mean stands in."""
        if not self.config.enabled:
            return None
        questions = [self._question(chunk.frames, chunk.text) for chunk in rollout.chunks]
        needed = len({key for _, _, key in questions} - self._cache.keys())  # a repeat is a cache hit
        left = self.config.max_requests - self.requests_made
        if needed > left:
            warnings.warn(f"VLM reward ({self.config.model}): the request budget (vlm_reward.max_requests="
                          f"{self.config.max_requests}) has {left} question(s) left, and an episode needs {needed}; "
                          "it gets no VLM score (raise the budget to cover the run)", VLMRewardWarning, stacklevel=2)
            self.unscored_episodes += 1
            return None
        answers = [self._ask(*question, chunk.text) for question, chunk in zip(questions, rollout.chunks)]
        clear = [answer for answer in answers if answer is not None]
        self.unscored_episodes += not clear
        return sum(clear) / len(clear) if clear else None
