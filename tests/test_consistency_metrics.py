"""Long-horizon consistency metrics (SCuts, SRC, PSNR drift) and the tabletop revisit scenario."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vplan.eval.consistency_metrics import (
    PSNR_MAX_DB,
    SCENE_CUT_DETECTOR,
    SceneCutDetector,
    ResNet18Features,
    VAEEncoderFeatures,
    _torchvision_to_transformers,
    make_feature_extractor,
    psnr_drift,
    psnr_per_chunk,
    resnet18_model,
    revisit_similarities,
    scene_cut_frames,
    scene_cuts,
    scene_return_consistency,
)
from vplan.eval.revisit import revisit_scenario
from vplan.worldmodel.config import VAEConfig
from vplan.worldmodel.vae import build_vae

SIZE = 64


def smooth_video(frames: int = 80) -> np.ndarray:
    """A square sliding one pixel per frame over a fixed gradient: continuous motion, no cut."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    background = np.stack([x * 3, y * 3, np.full_like(x, 120)], axis=-1).astype(np.uint8)
    video = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        left = 4 + t % (SIZE - 20)
        video[t, 20:36, left : left + 12] = (230, 40, 40)
    return video


def scene(seed: int) -> np.ndarray:
    """A still frame of coloured blocks, different for every seed."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)


def cut_video(lengths: list[int]) -> np.ndarray:
    """Still scenes one after another with a hard cut between each two."""
    return np.concatenate([np.repeat(scene(i)[None], n, axis=0) for i, n in enumerate(lengths)])


# --- SCuts ---


def test_no_scene_cut_in_a_smooth_video():
    assert scene_cuts(smooth_video()) == 0
    assert scene_cuts(np.repeat(scene(0)[None], 30, axis=0)) == 0


def test_every_hard_cut_is_found_where_it_is():
    assert scene_cut_frames(cut_video([20, 20, 20])) == [20, 40]
    assert scene_cuts(cut_video([12, 16, 9, 30])) == 3


def test_frames_reach_the_detector_in_its_colour_order():
    """PySceneDetect reads BGR: these two colours differ by a score of 10 (below the threshold of 12) as RGB,
    and by 66 were their channels handed over the wrong way round."""
    video = np.zeros((40, 16, 16, 3), np.uint8)
    video[:20] = [20, 6, 226]
    video[20:] = [0, 27, 209]
    assert scene_cut_frames(video) == []
    assert scene_cut_frames(video[..., ::-1].copy()) == [20]  # the same colours, their channels swapped


def test_cuts_at_consecutive_chunk_boundaries_count_separately():
    # min_scene_len (4 frames) is below one 8-frame chunk, so a model that cuts at every chunk is charged each time.
    assert SCENE_CUT_DETECTOR.min_scene_len < 8
    assert scene_cut_frames(cut_video([12, 8, 8, 8])) == [12, 20, 28]


def test_a_one_frame_glitch_counts_once():
    video = cut_video([40])
    video[20] = scene(7)
    assert scene_cuts(video) == 1


def test_a_cut_in_the_last_frames_counts_after_a_glitch_too():
    """Once the flash filter has merged a glitch, PySceneDetect reports a cut only after min_scene_len more
    frames, which a video ending sooner never shows: the same late cut counted or not by an earlier glitch."""
    for last in (1, 2, SCENE_CUT_DETECTOR.min_scene_len - 1):
        video = cut_video([60 - last, last])
        video[20] = scene(7)
        assert scene_cut_frames(video) == [20, 60 - last]


def test_a_cut_in_the_first_frames_counts():
    """A cut there starts a scene shorter than min_scene_len, which the detector drops; a context of 2 or 3 frames
    would hide the jump into the first generated chunk."""
    for first in range(1, SCENE_CUT_DETECTOR.min_scene_len + 1):
        assert scene_cut_frames(cut_video([first, 60])) == [first]


def test_the_detector_is_the_documented_one():
    """ContentDetector at threshold 12 and min_scene_len 4 (README, SceneCutDetector): a cut scoring between 12
    and PySceneDetect's default 27 is found; a fainter one is not."""
    assert SCENE_CUT_DETECTOR == SceneCutDetector(threshold=12.0, min_scene_len=4)
    first, second = scene(0).astype(float), scene(1).astype(float)
    for weight, cuts in ((0.15, [20]), (0.05, [])):
        blended = ((1 - weight) * first + weight * second).astype(np.uint8)
        video = np.concatenate([np.repeat(first[None].astype(np.uint8), 20, 0), np.repeat(blended[None], 20, 0)])
        assert scene_cut_frames(video) == cuts
        assert scene_cut_frames(video, detector=SceneCutDetector(threshold=27.0)) == []


def test_scene_cuts_checks_its_input():
    with pytest.raises(ValueError, match="uint8"):
        scene_cuts(np.zeros((5, SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match="fps"):
        scene_cuts(cut_video([5]), fps=0)
    assert scene_cuts(cut_video([1])) == 0


# --- SRC ---


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return build_vae(VAEConfig.tiny(image_size=SIZE)).eval()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    model = resnet18_model()
    path = tmp_path_factory.mktemp("resnet") / "resnet18.safetensors"
    # As transformers' ResNetForImageClassification saves it: a "resnet." prefix and a classifier head.
    state = {f"resnet.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state |= {"classifier.1.weight": torch.zeros(10, 512), "classifier.1.bias": torch.zeros(10)}
    save_file(state, str(path))
    return path, model


def test_src_is_100_for_identical_frames_and_lower_for_different_ones(tiny_vae, resnet18_file):
    video = np.stack([scene(0), scene(0), scene(1), smooth_video(1)[0]])
    for extractor in (VAEEncoderFeatures(tiny_vae), ResNet18Features(resnet18_file[0], image_size=64)):
        assert scene_return_consistency(video, [(0, 1)], extractor) == pytest.approx(100.0, abs=1e-6)
        different = revisit_similarities(video, [(0, 2), (0, 3)], extractor)
        # Random ResNet weights pool ReLU features that are all alike (~99%); trained ones spread more.
        assert (100 * different < 99.99).all(), (extractor.name, different)
        both = scene_return_consistency(video, [(0, 1), (0, 2)], extractor)
        assert both == pytest.approx(50 * (1 + different[0]), abs=1e-4)  # float32 features, batched otherwise


def test_resnet18_features_match_the_model_they_load(resnet18_file):
    path, model = resnet18_file
    extractor = ResNet18Features(path, image_size=64)
    frames = np.stack([scene(0), scene(1)])
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(pixel_values=x).pooler_output.flatten(1)
    assert extractor(frames).shape == (2, 512)
    torch.testing.assert_close(extractor(frames), expected)
    assert extractor.comparable_to_paper and not VAEEncoderFeatures.comparable_to_paper


def torchvision_resnet18_names() -> list[str]:
    """torchvision's resnet18 state-dict names (also timm's), written out from its architecture."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    names = ["conv1.weight", *[f"bn1.{p}" for p in bn]]
    for layer in range(1, 5):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            names += [f"{prefix}.conv1.weight", *[f"{prefix}.bn1.{p}" for p in bn]]
            names += [f"{prefix}.conv2.weight", *[f"{prefix}.bn2.{p}" for p in bn]]
            if layer > 1 and block == 0:
                names += [f"{prefix}.downsample.0.weight", *[f"{prefix}.downsample.1.{p}" for p in bn]]
    return names + ["fc.weight", "fc.bias"]


def test_resnet18_loads_torchvision_named_weights(tmp_path, resnet18_file):
    _, model = resnet18_file
    hf_state = model.state_dict()
    renamed = {name: _torchvision_to_transformers(name) for name in torchvision_resnet18_names()}
    trunk = {name: hf for name, hf in renamed.items() if hf is not None}
    assert sorted(trunk.values()) == sorted(hf_state)  # every trunk tensor, each once; only fc is dropped
    # torchvision's ImageNet file (resnet18-f37072fd) has no BatchNorm num_batches_tracked: 102 tensors
    state = {name: hf_state[hf].contiguous() for name, hf in trunk.items() if "num_batches_tracked" not in name}
    state |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    assert len(state) == 102
    save_file(state, str(tmp_path / "tv.safetensors"))
    frames = np.stack([scene(2), scene(3)])
    torch.testing.assert_close(ResNet18Features(tmp_path / "tv.safetensors", image_size=64)(frames),
                               ResNet18Features(resnet18_file[0], image_size=64)(frames))


def test_feature_extractor_choice_and_errors(tmp_path, tiny_vae, resnet18_file):
    assert make_feature_extractor(vae=tiny_vae).name == "vae_encoder"
    assert make_feature_extractor(resnet18_file[0], vae=tiny_vae).name == "resnet18"
    with pytest.raises(ValueError, match="neither"):
        make_feature_extractor()
    with pytest.raises(ValueError, match="safetensors"):
        ResNet18Features(tmp_path / "resnet18.pth")
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        ResNet18Features(tmp_path / "partial.safetensors")
    (tmp_path / "damaged.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="damaged.safetensors': not a readable safetensors file"):
        ResNet18Features(tmp_path / "damaged.safetensors")
    narrow = {k: v[: max(1, len(v) // 2)].contiguous() if v.ndim else v
              for k, v in load_file(str(resnet18_file[0])).items()}
    save_file(narrow, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(ValueError, match=r"embedder.embedder.convolution.weight is \(32, 3, 7, 7\), a ResNet-18's "
                                         r"is \(64, 3, 7, 7\) \(\d+ tensors differ\)"):
        ResNet18Features(tmp_path / "narrow.safetensors")
    video = np.stack([scene(0), scene(1)])
    extractor = VAEEncoderFeatures(tiny_vae)
    for bad in ([], [(1, 0)], [(1, 1)], [(0, 2)], [(-1, 1)]):  # a place revisited at its own frame: a trivial 100%
        with pytest.raises(ValueError, match="pairs"):
            scene_return_consistency(video, bad, extractor)


# --- PSNR drift ---


def test_psnr_drift_on_a_hand_made_example():
    # 4 context frames, then 3 chunks of 8 whose error doubles per chunk: 1, 2, 4 grey levels everywhere.
    real = np.full((4 + 3 * 8, 8, 8, 3), 100, np.uint8)
    generated = real.copy()
    for chunk, error in enumerate((1, 2, 4)):
        generated[4 + 8 * chunk : 4 + 8 * (chunk + 1)] += np.uint8(error)
    drift = psnr_drift(generated, real, chunk_frames=8, start=4)
    expected = [20 * np.log10(255 / e) for e in (1, 2, 4)]  # 48.13, 42.11, 36.09 dB
    np.testing.assert_allclose(drift.per_chunk, expected, rtol=1e-12)
    assert drift.slope == pytest.approx(-20 * np.log10(2))  # -6.02 dB per chunk
    assert drift.intercept == pytest.approx(expected[0])


def test_psnr_per_chunk_edges():
    real = np.zeros((20, 4, 4, 3), np.uint8)
    np.testing.assert_array_equal(psnr_per_chunk(real, real, chunk_frames=8), [PSNR_MAX_DB, PSNR_MAX_DB])  # tail dropped
    assert psnr_drift(real, real, chunk_frames=8).slope == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 2"):
        psnr_drift(real, real, chunk_frames=8, start=8)
    with pytest.raises(ValueError, match="one shape"):
        psnr_per_chunk(real[:10], real)


# --- the revisit scenario ---


@pytest.fixture(scope="module")
def scenario():
    return revisit_scenario(seed=0)


def test_revisit_scenario_is_long_and_labelled(scenario):
    assert len(scenario.frames) >= 4 + 32 * 8
    assert scenario.frames.dtype == np.uint8 and scenario.frames.shape[1:] == (SIZE, SIZE, 3)
    assert len(scenario.subgoals) == len(scenario.frames) == len(scenario.states)
    assert all(scenario.subgoals) and len(set(scenario.subgoals)) >= 6  # pick, place and return texts
    assert scenario.rounds >= 2 and len(scenario.pairs) >= 8
    assert all(0 <= a < b < len(scenario.frames) for a, b in scenario.pairs)
    assert {scenario.states[a] for a, _ in scenario.pairs} == {"A", "B"}  # cubes at their starts, on the spots
    assert scenario.pairs[0][0] == 0  # the start of the take is the first visit of state A


def test_revisit_pairs_show_the_same_scene(scenario):
    frames = scenario.frames.astype(np.float64)
    pair_mae = np.array([np.abs(frames[a] - frames[b]).mean() for a, b in scenario.pairs])
    # Far apart in time, but the same scene: the gripper home, cubes within 2 cm of where they were.
    assert min(b - a for a, b in scenario.pairs) > 64
    assert pair_mae.max() < 2.5, pair_mae
    cube_shift = np.array([np.linalg.norm(scenario.cube_positions[a] - scenario.cube_positions[b], axis=1).max()
                           for a, b in scenario.pairs])
    assert cube_shift.max() < 0.02 + 1e-3, cube_shift
    states = np.array(scenario.states)
    a_frame, b_frame = np.flatnonzero(states == "A")[0], np.flatnonzero(states == "B")[0]
    assert np.abs(frames[a_frame] - frames[b_frame]).mean() > 4 * pair_mae.max()  # the two states differ


def test_revisit_scenario_is_one_take_without_cuts(scenario):
    assert scene_cuts(scenario.frames) == 0


def test_revisit_scenario_is_deterministic_per_seed(scenario):
    again = revisit_scenario(seed=0)
    np.testing.assert_array_equal(again.frames, scenario.frames)
    assert again.pairs == scenario.pairs and again.subgoals == scenario.subgoals
    other = revisit_scenario(seed=1, min_frames=1)
    assert other.rounds == 1 and not np.array_equal(other.frames[0], scenario.frames[0])
