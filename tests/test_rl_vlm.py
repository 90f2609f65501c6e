"""The VLM reward against a local OpenAI-compatible server: clear answers, bad replies, errors, cache, budget.

The server is test_planner's `FakeEndpoint` (a real `http.server` on 127.0.0.1 in a thread); the reward talks to it
through the real `openai` client over real HTTP.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from test_planner import FakeEndpoint, completion

from vplan.chat import REDACTED
from vplan.errors import UsageError
from vplan.rl.config import VLMRewardConfig
from vplan.rl.rollout import EpisodeRollout, ImaginedChunk
from vplan.rl.vlm_reward import VLMReward, VLMRewardWarning, parse_yes_no, pick_frames

SECRET = "sk-test-never-log-this-0123456789abcdef"
PICK, PLACE = "pick up the red cube", "place the red cube on the left spot"


@pytest.fixture()
def endpoint():
    server = FakeEndpoint()
    yield server
    server.close()


def chunk(text: str, value: int, frames: int = 8) -> ImaginedChunk:
    """A chunk of `frames` 8x8 frames; frame t is filled with value + t."""
    pixels = np.stack([np.full((8, 8, 3), value + t, np.uint8) for t in range(frames)])
    return ImaginedChunk(text=text, context=torch.zeros(1, 1, 1, 1, 1), latents=torch.zeros(1, 1, 1, 1, 1),
                         frames=pixels, actions=np.zeros((frames, 4), np.float32))


def rollout(*chunks: ImaginedChunk) -> EpisodeRollout:
    return EpisodeRollout(task_seed=0, plan_index=0, continuation=0, plan={}, final_info={}, stats={},
                          chunks=list(chunks))


def reward(endpoint: FakeEndpoint, **overrides: Any) -> VLMReward:
    settings: dict[str, Any] = {"enabled": True, "base_url": endpoint.base_url, "api_key": SECRET,
                                "model": "fake-vlm", "timeout_s": 5.0, **overrides}
    return VLMReward(VLMRewardConfig(**settings))


def answer(content: str | None, delay: float = 0.0):
    return lambda body: (200, completion(content), delay)


def question_text(request: dict[str, Any]) -> str:
    return request["body"]["messages"][0]["content"][0]["text"]


def vlm_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, VLMRewardWarning)]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("yes", True),
        ("No", False),
        ("  Yes.\n", True),
        ("**NO**", False),
        ('"yes"', True),
        ("Yes, the cube is lifted.", True),
        ("No - the cube vanishes.", False),
        ("Yes, there is no teleporting.", True),
        ("Yes, no teleporting or melting.", True),  # the default question invites it
        ("Yes. No object vanishes.", True),
        ("No, yes the cube moves oddly", False),  # the opposite word starts an explanation, not an answer
        ("yes yes", True),
        ("maybe", None),
        ("I think so", None),
        ("Yeah", None),
        ("Yesterday", None),
        ("Answer: yes", None),
        ("", None),
        ("  ?! ", None),
        ("yes or no", None),
        ("Yes and no.", None),
        ("yes/no", None),
        ("No, yes.", None),
        ("YES / NO", None),
        ("Yes and no, it melts.", None),
        ("Yes but no.", None),  # was read as yes
        ("Yes, but no.", None),  # "but" joining the opposite answer (the case above is unclear at its first word)
        ("No, but yes.", None),
        ("Yes. Correction: no.", None),
        ("No - wait, yes.", None),  # was read as no
        ("Yes, but the cube is small.", True),
        # read as clear answers, the wrong way round (the default question invites "No teleporting ...")
        ("No teleporting or melting; the cube is lifted. Yes.", None),
        ("no, wait, it does: yes", None),
        ("No. Actually, yes.", None),
        ("Yes. On second thought, no.", None),
        ("Yes the cube is lifted", None),  # no answer standing alone: unclear rather than guessed
        ("Yes\n\nThe cube moves; no vanishing.", True),  # a common vision-model reply: the answer on its own line
        ("No \r\nThe cube vanishes.", False),
        ("**Yes**", True),
        ("**Yes**\n\nThe cube is lifted.", True),
        ("Yes\n\nNo teleporting or melting.", True),
        ("Yes\nNo", None),  # a line break does not hide the opposite answer
        ("Yes\nor no", None),
        ("Yes\n\nActually, no.", None),
        ("Yes the cube\nis lifted", None),
        ("No teleporting\nYes", None),
        ("Yes. Actually, the cube is small.", True),  # taken back to nothing
        (None, None),
        (42, None),
    ],
)
def test_parse_yes_no(content: Any, expected: bool | None) -> None:
    assert parse_yes_no(content) is expected


def test_pick_frames_evenly_spaced() -> None:
    frames = chunk(PICK, 0).frames
    assert pick_frames(frames, 4)[:, 0, 0, 0].tolist() == [0, 2, 5, 7]
    assert pick_frames(frames, 1)[:, 0, 0, 0].tolist() == [0]
    assert pick_frames(frames[:2], 4)[:, 0, 0, 0].tolist() == [0, 1]  # fewer frames than asked: all of them
    with pytest.raises(ValueError, match="expected a uint8"):
        pick_frames(frames.astype(np.float32), 4)


@pytest.mark.parametrize(("content", "expected"), [("Yes.", 1.0), ("no", 0.0)])
def test_clear_answer_scores(endpoint: FakeEndpoint, content: str, expected: float) -> None:
    endpoint.reply = answer(content)
    vlm = reward(endpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VLMRewardWarning)
        assert vlm.score(rollout(chunk(PICK, 0))) == expected
    vlm.close()
    assert vlm.requests_made == 1 and len(endpoint.requests) == 1
    request = endpoint.requests[0]
    assert request["headers"]["authorization"] == f"Bearer {SECRET}"
    body = request["body"]
    assert body["model"] == "fake-vlm" and len(body["messages"]) == 1
    content_parts = body["messages"][0]["content"]
    assert f'"{PICK}"' in content_parts[0]["text"] and content_parts[0]["text"].endswith("Answer yes or no.")
    images = [part["image_url"]["url"] for part in content_parts[1:]]
    assert len(images) == 4 and all(url.startswith("data:image/png;base64,") for url in images)


def test_mixed_rollout_gives_the_share(endpoint: FakeEndpoint) -> None:
    endpoint.reply = lambda body: (200, completion("yes" if PICK in question_text({"body": body}) else "No."), 0.0)
    vlm = reward(endpoint)
    assert vlm.score(rollout(chunk(PICK, 0), chunk(PLACE, 10), chunk(PICK, 20))) == pytest.approx(2 / 3)
    assert vlm.requests_made == 3


@pytest.mark.parametrize("content", ["maybe", "I think so", "", "Yes and no.", "#$%&", None])
def test_unclear_reply_gives_none_and_a_warning(endpoint: FakeEndpoint, content: str | None) -> None:
    endpoint.reply = answer(content)
    vlm = reward(endpoint)
    with pytest.warns(VLMRewardWarning, match="not a clear yes or no"):
        assert vlm.score(rollout(chunk(PICK, 0))) is None
    assert len(endpoint.requests) == 1 and (vlm.unanswered_chunks, vlm.unscored_episodes) == (1, 1)


@pytest.mark.parametrize(
    ("reply", "message"),
    [(completion("Ye", finish_reason="length"), "cut at the model's token limit"),
     (completion(None, refusal="I cannot judge this."), "the model refused")],
)
def test_a_cut_or_refused_reply_gives_none_and_says_why(endpoint: FakeEndpoint, reply: Any, message: str) -> None:
    """... and is no failed request: the endpoint answered (three in a row turned the VLM reward off)."""
    endpoint.reply = lambda body: (200, reply, 0.0)
    vlm = reward(endpoint)
    with pytest.warns(VLMRewardWarning, match=message):
        assert vlm.score(rollout(*(chunk(PICK, 10 * i) for i in range(4)))) is None
    assert len(endpoint.requests) == 4 and vlm.endpoint.failures_in_a_row == 0


@pytest.mark.parametrize(("answer", "score"), [("no", 0.0), ("yes", 1.0)])
def test_unclear_among_clear_answers_is_left_out(endpoint: FakeEndpoint, answer: str, score: float) -> None:
    """The one clear answer alone scores the episode (an unclear one counted as "no" would make the "yes" 0.5)."""
    endpoint.reply = lambda body: (200, completion(answer if PICK in question_text({"body": body}) else "maybe"), 0.0)
    with pytest.warns(VLMRewardWarning, match="not a clear yes or no"):
        assert reward(endpoint).score(rollout(chunk(PICK, 0), chunk(PLACE, 10))) == score


def test_http_500_is_retried_then_gives_none_and_a_warning(endpoint: FakeEndpoint) -> None:
    endpoint.reply = lambda body: (500, {"error": {"message": f"internal error for key {SECRET}"}}, 0.0)
    vlm = reward(endpoint, max_retries=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert vlm.score(rollout(chunk(PICK, 0))) is None
    assert len(endpoint.requests) == 1 + 2 and vlm.requests_made == 1
    (message,) = vlm_warnings(record)
    assert "InternalServerError" in message and "500" in message and "with up to 2 retries" in message
    assert SECRET not in message and REDACTED in message


def test_an_endpoint_that_keeps_failing_is_asked_no_more(endpoint: FakeEndpoint) -> None:
    """Each failed question waited out its timeout and retries (30 s x 3 by default), chunk after chunk."""
    endpoint.reply = lambda body: (500, {"error": {"message": "down"}}, 0.0)
    vlm = reward(endpoint, max_retries=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert vlm.score(rollout(*(chunk(PICK, 10 * i) for i in range(5)))) is None
    assert len(endpoint.requests) == 3 and vlm.requests_made == 3
    said = vlm_warnings(record)  # the 3 failures, then the giving up once (one a chunk flooded a run: helper-195)
    assert len(said) == 4 and "failed 3 requests in a row, so it is asked no more in this run" in said[-1]
    assert vlm.unanswered_chunks == 5
    endpoint.reply = answer("yes")
    vlm.endpoint.failures_in_a_row = 2  # an answer in between starts the count again
    assert vlm.ask(chunk(PICK, 99).frames, PICK) is True and vlm.endpoint.failures_in_a_row == 0


def test_timeout_gives_none_and_a_warning(endpoint: FakeEndpoint) -> None:
    endpoint.reply = answer("yes", delay=3.0)
    vlm = reward(endpoint, timeout_s=0.5, max_retries=0)
    with pytest.warns(VLMRewardWarning, match="APITimeoutError"):
        assert vlm.score(rollout(chunk(PICK, 0))) is None
    assert len(endpoint.requests) == 1


def test_cache_answers_a_repeated_chunk_without_a_request(endpoint: FakeEndpoint) -> None:
    endpoint.reply = answer("yes")
    vlm = reward(endpoint)
    episode = rollout(chunk(PICK, 0))
    assert vlm.score(episode) == 1.0 and vlm.score(episode) == 1.0
    assert vlm.ask(chunk(PICK, 0).frames.copy(), PICK) is True  # same content, another array
    assert len(endpoint.requests) == 1 and vlm.requests_made == 1 and vlm.cache_hits == 2
    vlm.ask(chunk(PICK, 0).frames, PLACE)  # another subgoal, same frames: a new question
    vlm.ask(chunk(PICK, 1).frames, PICK)  # other frames
    assert len(endpoint.requests) == 3 and vlm.cache_hits == 2


def test_unclear_reply_is_not_cached(endpoint: FakeEndpoint) -> None:
    endpoint.reply = answer("maybe")
    vlm = reward(endpoint)
    with pytest.warns(VLMRewardWarning):
        vlm.ask(chunk(PICK, 0).frames, PICK)
        vlm.ask(chunk(PICK, 0).frames, PICK)
    assert len(endpoint.requests) == 2 and vlm.cache_hits == 0


def test_budget_stops_requests(endpoint: FakeEndpoint) -> None:
    endpoint.reply = answer("yes")
    vlm = reward(endpoint, max_requests=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert vlm.ask(chunk(PICK, 0).frames, PICK) is True
        assert vlm.ask(chunk(PLACE, 10).frames, PLACE) is None  # the budget is spent
        assert vlm.score(rollout(chunk(PICK, 0))) == 1.0  # a cache hit needs no budget
    assert len(endpoint.requests) == 1 and vlm.requests_made == 1
    (message,) = vlm_warnings(record)
    assert "budget (1) is spent" in message and PLACE in message


def test_an_episode_the_budget_cannot_cover_whole_is_not_scored(endpoint: FakeEndpoint) -> None:
    """Scored on its first chunks alone (the budget ran out part-way through a group), an episode was compared
    with others scored on all of theirs."""
    endpoint.reply = answer("yes")
    vlm = reward(endpoint, max_requests=2)
    with pytest.warns(VLMRewardWarning, match=r"has 2 question\(s\) left, and an episode needs 3; it gets no VLM"):
        assert vlm.score(rollout(chunk(PICK, 0), chunk(PLACE, 10), chunk(PICK, 20))) is None
    assert len(endpoint.requests) == 0 and vlm.requests_made == 0  # none asked: the budget is left for others
    assert (vlm.unanswered_chunks, vlm.unscored_episodes) == (0, 1)
    assert vlm.score(rollout(chunk(PICK, 0), chunk(PLACE, 10))) == 1.0  # one it covers whole
    assert vlm.score(rollout(chunk(PICK, 0), chunk(PLACE, 10))) == 1.0  # from the cache: no budget needed
    assert len(endpoint.requests) == 2


def test_the_budget_and_cache_carry_over_a_resume(endpoint: FakeEndpoint) -> None:
    """`vplan rl` checkpoints this state, so a resumed run neither gets a fresh budget nor pays again."""
    endpoint.reply = answer("no")  # a "no" kept as it was (a yes-only fake let a cache of all-yes pass)
    first = reward(endpoint, max_requests=2)
    first.ask(chunk(PICK, 0).frames, PICK)
    state = json.loads(json.dumps(first.state()))  # as the checkpoint's JSON holds it
    resumed = reward(endpoint, max_requests=2)
    resumed.load_state(state)
    assert resumed.ask(chunk(PICK, 0).frames, PICK) is False and len(endpoint.requests) == 1  # from the cache
    resumed.ask(chunk(PICK, 1).frames, PICK)
    with pytest.warns(VLMRewardWarning, match="budget"):
        assert resumed.ask(chunk(PICK, 2).frames, PICK) is None
    assert len(endpoint.requests) == 2


def test_disabled_sends_nothing(endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    vlm = VLMReward(VLMRewardConfig())  # off by default; no key needed
    assert vlm.name == "vlm" and not vlm.config.enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vlm.score(rollout(chunk(PICK, 0))) is None
        assert vlm.ask(chunk(PICK, 0).frames, PICK) is None
    vlm.close()
    assert vlm.requests_made == 0 and not endpoint.requests


def test_key_never_in_warnings(endpoint: FakeEndpoint) -> None:
    endpoint.reply = answer(f"maybe; by the way, your key is {SECRET}")
    vlm = reward(endpoint)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        vlm.score(rollout(chunk(PICK, 0)))
    (message,) = vlm_warnings(record)
    assert SECRET not in message and SECRET[:12] not in message and REDACTED in message
    assert SECRET not in repr(vlm.config)


def test_key_from_the_environment(endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPLAN_TEST_VLM_KEY", SECRET)
    endpoint.reply = answer("yes")
    vlm = reward(endpoint, api_key=None, api_key_env="VPLAN_TEST_VLM_KEY")
    assert vlm.ask(chunk(PICK, 0).frames, PICK) is True
    assert endpoint.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"


def test_enabled_without_key_or_endpoint_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UsageError, match="OPENAI_API_KEY"):
        VLMReward(VLMRewardConfig(enabled=True))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": " "}, "model: expected a non-empty"),
        ({"base_url": "localhost:8000"}, "base_url: expected an http"),
        ({"api_key_env": ""}, "api_key_env: expected"),
        ({"timeout_s": 0}, "timeout_s: expected a positive"),
        ({"timeout_s": float("nan")}, "timeout_s: expected a positive"),
        ({"max_retries": 11}, r"max_retries: expected an int in \[0, 10\]"),
        ({"temperature": 3.0}, "temperature: expected"),
        ({"max_requests": 0}, "max_requests: expected a positive int"),
        ({"frames_per_question": 0}, "frames_per_question: expected"),
        ({"question": "Is this a robot?"}, "question: expected a template"),
        ({"question": "Does it show {subgoal} in {scene}?"}, "question: expected a template"),
        ({"question": "Does it show {subgoal}? {"}, "question: expected a template"),
        ({"question": "Does it show {{subgoal}}?"}, "question: expected a template"),
        ({"question": "Does it show {subgoal} at {}?"}, "question: expected a template"),
    ],
)
def test_config_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VLMRewardConfig(**overrides)


def test_a_kill_between_checkpoints_keeps_the_budget_spent_and_the_answers_got(endpoint: FakeEndpoint,
                                                                               tmp_path: Any) -> None:
    """`vplan rl` checkpoints once an iteration; the journal keeps what a kill in between spent and got."""
    endpoint.reply = answer("yes")
    journal = tmp_path / "vlm_requests.jsonl"
    first = reward(endpoint, max_requests=3)
    first.keep_journal(journal)
    checkpoint = json.loads(json.dumps(first.state()))  # the last checkpoint: nothing asked yet
    first.ask(chunk(PICK, 0).frames, PICK)
    endpoint.reply = answer("no")
    first.ask(chunk(PICK, 1).frames, PICK)
    with journal.open("a") as file:  # then killed while noting a third
        file.write('{"requests_m')
    resumed = reward(endpoint, max_requests=3)
    resumed.load_state(checkpoint)
    resumed.keep_journal(journal)
    assert resumed.requests_made == 2
    assert resumed.ask(chunk(PICK, 0).frames, PICK) is True and resumed.ask(chunk(PICK, 1).frames, PICK) is False
    assert len(endpoint.requests) == 2  # answered from the journal, as they were, not paid again
    resumed.ask(chunk(PICK, 2).frames, PICK)
    with pytest.warns(VLMRewardWarning, match=r"budget \(3\) is spent"):
        assert resumed.ask(chunk(PICK, 3).frames, PICK) is None
    assert len(endpoint.requests) == 3
    resumed.clear_journal()  # a checkpoint holds it all now
    assert not journal.exists()


def test_a_chunk_repeated_in_an_episode_needs_one_question_of_the_budget(endpoint):
    """Counted twice, the second left the episode unscored with a budget warning (a mutation survived, helper-208)."""
    endpoint.reply = answer("yes")
    vlm = reward(endpoint, max_requests=1)
    assert vlm.score(rollout(chunk(PICK, 0), chunk(PICK, 0))) == 1.0
    assert len(endpoint.requests) == 1


def test_a_stale_journal_never_lowers_the_budget_spent(endpoint, tmp_path):
    """A kill between the checkpoint's save and clearing the journal leaves a journal of a lower count: taken as
    it is, questions already paid for would be paid for again (a mutation survived, helper-208)."""
    journal = tmp_path / "vlm_requests.jsonl"
    journal.write_text(json.dumps({"requests_made": 1}) + "\n" + json.dumps({"key": "k", "answer": True}) + "\n")
    vlm = reward(endpoint, max_requests=5)
    vlm.load_state({"requests_made": 3, "cache": {}})
    vlm.keep_journal(journal)
    assert vlm.requests_made == 3 and vlm._cache == {"k": True}
