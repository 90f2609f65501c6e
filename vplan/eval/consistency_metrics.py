"""Long-horizon consistency metrics of generated videos: SCuts, SRC and PSNR drift (SlowFast-VGen §4).

Pure functions on channel-last uint8 frame arrays (T, H, W, 3); the scenario that produces revisits on the
tabletop is `vplan.eval.revisit`.

**SCuts** — the number of scene cuts PySceneDetect finds in a video (StreamingT2V's metric, used by
SlowFast-VGen: fewer is better; a consistent video has none). The detector and its settings are pinned in
`SCENE_CUT_DETECTOR`; see its docstring for why these values suit 64×64 frames at 10 fps.

**SRC** (scene return consistency) — the mean cosine similarity, in percent, between image features of the
frame where a place is first visited and the frame where it is visited again (SlowFast-VGen reports 93.71 for
Temp-LoRA and 89.04 without it, with ResNet-18 features). The extractor is pluggable: `ResNet18Features`
(ResNet-18 built with transformers' `ResNetModel` from a local safetensors file — nothing is downloaded) when
weights are given, else `VAEEncoderFeatures` (the project's own frame VAE: posterior-mean latents,
flattened). VAE-feature SRC compares memory strategies with one another (whether it ranks them as ResNet-18
SRC would is not measured); its absolute values are not comparable to the paper's: the latents are signed and
spatial, not pooled ReLU features of an ImageNet network.

**PSNR drift** — PSNR of each generated chunk against the real frames of the same steps, and the
least-squares slope over the chunk index (dB per chunk; negative means the video drifts away from the truth).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

PSNR_MAX_DB = 100.0  # an exact match: the MSE is floored at 1e-10 (pixels in [0, 1]), as in vae_loss
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_video(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 array (T, H, W, 3), got {frames.dtype} of shape {frames.shape}")
    return frames


# --- SCuts ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneCutDetector:
    """The pinned PySceneDetect settings of SCuts: `ContentDetector(threshold=12, min_scene_len=4)`.

    ContentDetector scores each frame by the mean absolute change of hue, saturation and value against the
    previous frame (0-255 scale) and reports a cut where the score reaches `threshold`; cuts closer than
    `min_scene_len` frames are merged (PySceneDetect's flash filter), so a one-frame glitch counts once.

    Why these values for 64×64 frames at 10 fps (measured on tabletop expert episodes, seeds 10000+): the
    table and wall fill most of the frame, so scores are small. Consecutive real frames score at most 8.8
    (12 episodes, below 10 in all of 40; the gripper is large in the image and moves up to 3 cm a step),
    9.2 after a round trip through the trained frame VAE, and 9.8 with per-frame latent noise of 0.3 σ
    added before decoding (flicker). A jump into another episode's scene scores from 6 up (median 9
    between first frames, 12 mid-episode).
    Cuts per ~140-frame episode, and the share of such jumps found (3 splices per video):

    | detector                          | real | VAE | VAE + 0.5 σ flicker | jumps found (real / VAE) |
    | --------------------------------- | ---- | --- | ------------------- | ------------------------ |
    | ContentDetector threshold 10      | 0    | 0   | 1.25                | 96% / 92%                |
    | **ContentDetector threshold 12**  | 0    | 0   | 0                   | 80% / 62%                |
    | AdaptiveDetector, min_content 5   | 0    | 0   | 0                   | 91% / 62% (4% flickery)  |
    | AdaptiveDetector defaults         | 0    | 0   | —                   | 22% / —                  |
    | ContentDetector default (27)      | 0    | —   | —                   | 0%                       |

    Threshold 12 is the lowest of these that charges no cut to a faithful video with moderate flicker, so a
    memory strategy is not penalised for decoder noise; it still finds most jumps to a different scene.
    `min_scene_len` = 4 frames (0.4 s, half an 8-frame chunk) keeps cuts at consecutive chunk boundaries
    apart; the default 15 frames (0.5 s at 30 fps) would merge them at 10 fps.

    StreamingT2V, whose SCuts SlowFast-VGen reports, is recalled to use AdaptiveDetector with default
    settings on larger frames (not verified against the paper's text here). At 64×64 its `min_content_val`
    of 15 lies above most scene jumps (22% found), and with it lowered the rolling-average ratio goes blind
    once frames flicker (4% found at 0.5 σ), hence a ContentDetector threshold measured at this size.
    """

    threshold: float = 12.0
    min_scene_len: int = 4

    def build(self) -> Any:
        """A fresh `scenedetect.detectors.ContentDetector` with these settings (detectors keep state)."""
        from scenedetect.detectors import ContentDetector

        return ContentDetector(threshold=self.threshold, min_scene_len=self.min_scene_len)


SCENE_CUT_DETECTOR = SceneCutDetector()


def _array_video_stream(frames_bgr: np.ndarray, fps: float) -> Any:
    """A PySceneDetect `VideoStream` that reads frames from memory (no file, no decoding)."""
    from scenedetect.common import FrameTimecode
    from scenedetect.video_stream import SeekError, VideoStream

    class ArrayVideoStream(VideoStream):
        BACKEND_NAME = "vplan_array"

        def __init__(self) -> None:
            self._frames = frames_bgr
            self._rate = Fraction(fps).limit_denominator(1001)
            self._next = 0  # index of the frame the next read() returns

        path = property(lambda self: "<array>")
        name = property(lambda self: "array")
        is_seekable = property(lambda self: True)
        frame_rate = property(lambda self: self._rate)
        duration = property(lambda self: self.base_timecode + len(self._frames))
        frame_size = property(lambda self: (int(self._frames.shape[2]), int(self._frames.shape[1])))
        aspect_ratio = property(lambda self: 1.0)
        frame_number = property(lambda self: self._next)
        position_ms = property(lambda self: 1000.0 * max(self._next - 1, 0) / float(self._rate))

        @property
        def position(self) -> FrameTimecode:
            return self.base_timecode + max(self._next - 1, 0)

        def read(self, decode: bool = True) -> np.ndarray | bool:
            if self._next >= len(self._frames):
                return False
            self._next += 1
            return self._frames[self._next - 1] if decode else True

        def reset(self) -> None:
            self._next = 0

        def seek(self, target: Any) -> None:
            if not isinstance(target, FrameTimecode):
                target = FrameTimecode(target, self._rate)
            frame = target.frame_num
            if not 0 <= frame <= len(self._frames):
                raise SeekError(f"frame {frame} is outside the video's {len(self._frames)} frames")
            self._next = frame

    return ArrayVideoStream()


def scene_cut_frames(
    frames: np.ndarray, fps: float = 10.0, detector: SceneCutDetector = SCENE_CUT_DETECTOR
) -> list[int]:
    """Indices of the frames that start a new scene, found by PySceneDetect's `SceneManager`.

    `frames` is an RGB uint8 video (T, H, W, 3); it is handed to PySceneDetect from memory through a
    `VideoStream` over the array, at full resolution (no downscaling), between `min_scene_len` copies of its
    first frame and as many of its last: a cut in the first frames would start a scene shorter than that, which
    the detector drops, and once the flash filter has merged a glitch it reports each cut only after that many
    frames, so a cut in the last ones was dropped or kept by what happened earlier in the video. Copies change
    nothing, so they hold no cut.
    """
    from scenedetect import SceneManager

    frames = _check_video(frames)
    if not fps > 0:
        raise ValueError(f"fps: expected a positive frame rate, got {fps!r}")
    if len(frames) < 2:
        return []
    manager = SceneManager()
    manager.auto_downscale = False
    manager.downscale = 1
    manager.add_detector(detector.build())
    pad = detector.min_scene_len
    padded = np.concatenate([np.repeat(frames[:1], pad, axis=0), frames, np.repeat(frames[-1:], pad, axis=0)])
    manager.detect_scenes(video=_array_video_stream(np.ascontiguousarray(padded[..., ::-1]), fps))  # RGB → BGR
    starts = [int(start.frame_num) - pad for start, _ in manager.get_scene_list()[1:]]
    return [start for start in starts if 0 < start < len(frames)]


def scene_cuts(frames: np.ndarray, fps: float = 10.0, detector: SceneCutDetector = SCENE_CUT_DETECTOR) -> int:
    """SCuts: the number of scene cuts PySceneDetect finds in an RGB uint8 video (T, H, W, 3)."""
    return len(scene_cut_frames(frames, fps, detector))


# --- SRC -----------------------------------------------------------------------------------------------------


class FeatureExtractor(Protocol):
    """Maps RGB uint8 frames (N, H, W, 3) to one feature vector per frame, (N, D) float."""

    name: str
    comparable_to_paper: bool

    def __call__(self, frames: np.ndarray) -> torch.Tensor: ...


RESNET18_CONFIG = dict(
    num_channels=3,
    embedding_size=64,
    hidden_sizes=[64, 128, 256, 512],
    depths=[2, 2, 2, 2],
    layer_type="basic",
    hidden_act="relu",
    downsample_in_first_stage=False,
)


def resnet18_model() -> Any:
    """A randomly initialised ResNet-18 trunk (transformers `ResNetModel`, 11.2 M parameters, no classifier)."""
    from transformers import ResNetConfig, ResNetModel

    return ResNetModel(ResNetConfig(**RESNET18_CONFIG))


def _torchvision_to_transformers(key: str) -> str | None:
    """torchvision/timm ResNet-18 parameter name → transformers `ResNetModel` name (None: the classifier)."""
    parts = key.split(".")
    if parts[0] == "fc":
        return None
    if parts[0] in ("conv1", "bn1"):
        kind = "convolution" if parts[0] == "conv1" else "normalization"
        return ".".join(["embedder.embedder", kind, *parts[1:]])
    if parts[0].startswith("layer") and len(parts) >= 4:
        stage, block = int(parts[0][len("layer") :]) - 1, parts[1]
        prefix = f"encoder.stages.{stage}.layers.{block}"
        if parts[2] == "downsample":
            kind = "convolution" if parts[3] == "0" else "normalization"
            return ".".join([prefix, "shortcut", kind, *parts[4:]])
        conv = {"conv1": "layer.0.convolution", "bn1": "layer.0.normalization",
                "conv2": "layer.1.convolution", "bn2": "layer.1.normalization"}.get(parts[2])
        if conv is not None:
            return ".".join([prefix, conv, *parts[3:]])
    return key  # unknown: reported as unexpected by the strict load


def load_resnet18_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """ResNet-18 trunk weights from a local safetensors file, renamed to transformers' `ResNetModel`.

    Accepted layouts: transformers' `ResNetModel` or `ResNetForImageClassification` (e.g. the
    microsoft/resnet-18 files; the `resnet.` prefix and the classifier are dropped) and torchvision/timm
    naming (`conv1`, `bn1`, `layer1.0.conv1`, ...; `fc` is dropped). Never a pickle.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise ValueError(f"resnet18 weights: expected an existing .safetensors file, got {str(path)!r}")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"resnet18 weights {str(path)!r}: not a readable safetensors file ({error})") from None
    hf_layout = any(k.startswith(("embedder.", "encoder.", "resnet.")) for k in raw)
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if hf_layout:
            if key.startswith("classifier."):
                continue
            new = key[len("resnet.") :] if key.startswith("resnet.") else key
        else:
            new = _torchvision_to_transformers(key)
            if new is None:
                continue
        state[new] = value
    return state


class ResNet18Features:
    """ResNet-18 global-average-pooled features (512-d), as in SlowFast-VGen's SRC.

    Frames are resized to `image_size` (bilinear) and normalised with the ImageNet mean and std the
    torchvision/timm/microsoft ResNet-18 weights were trained with. The weights come only from `weights`, a
    local safetensors file (`load_resnet18_state_dict`); nothing is downloaded.
    """

    name = "resnet18"
    comparable_to_paper = True

    def __init__(self, weights: str | Path, image_size: int = 224, device: str | torch.device = "cpu",
                 batch_size: int = 64) -> None:
        if image_size < 32:
            raise ValueError(f"image_size: expected at least 32 pixels, got {image_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        model = resnet18_model()
        state = load_resnet18_state_dict(weights)
        expected = model.state_dict()
        for name in expected:  # torchvision's ImageNet file predates BatchNorm's counter, which inference ignores
            if name.endswith(".num_batches_tracked"):
                state.setdefault(name, torch.zeros_like(expected[name]))
        missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
        if missing or unexpected:
            raise ValueError(
                f"resnet18 weights {str(weights)!r}: expected a ResNet-18 (transformers or torchvision naming); "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        reshaped = [name for name in expected if state[name].shape != expected[name].shape]
        if reshaped:
            name = reshaped[0]
            raise ValueError(f"resnet18 weights {str(weights)!r}: expected a ResNet-18; {name} is "
                             f"{tuple(state[name].shape)}, a ResNet-18's is {tuple(expected[name].shape)}"
                             f"{f' ({len(reshaped)} tensors differ)' if len(reshaped) > 1 else ''}")
        model.load_state_dict(state, strict=True)
        self.model = model.to(device).eval()
        self.image_size, self.device, self.batch_size = image_size, torch.device(device), batch_size
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        frames = _check_video(frames)
        out = []
        for start in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(frames[start : start + self.batch_size]).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            x = torch.nn.functional.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
            pooled = self.model(pixel_values=(x - self._mean) / self._std).pooler_output
            out.append(pooled.flatten(1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, RESNET18_CONFIG["hidden_sizes"][-1])


class VAEEncoderFeatures:
    """The project's frame VAE as a feature extractor: posterior-mean latents, flattened (C·h·w values).

    Not comparable to the paper's ResNet-18 SRC in absolute terms (see the module docstring); use it to
    compare memory strategies with one another.
    """

    name = "vae_encoder"
    comparable_to_paper = False

    def __init__(self, vae: AutoencoderKL) -> None:
        self.vae = vae.eval()

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        from vplan.worldmodel.vae import encode_frames

        frames = _check_video(frames)
        latents = encode_frames(self.vae, torch.from_numpy(np.ascontiguousarray(frames)))
        return latents.flatten(1).float().cpu()


def make_feature_extractor(
    resnet18_weights: str | Path | None = None, vae: AutoencoderKL | None = None
) -> FeatureExtractor:
    """ResNet-18 features when a weight file is given, else the VAE encoder's (which then must be given)."""
    if resnet18_weights:
        return ResNet18Features(resnet18_weights)
    if vae is None:
        raise ValueError("expected resnet18_weights (a local .safetensors file) or a VAE for SRC features, got neither")
    return VAEEncoderFeatures(vae)


def _check_pairs(pairs: Sequence[tuple[int, int]], length: int) -> np.ndarray:
    array = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2) if len(pairs) else np.zeros((0, 2), np.int64)
    if len(array) == 0:
        raise ValueError("pairs: expected at least one (first_visit, revisit) index pair, got none")
    bad = array[(array < 0).any(axis=1) | (array >= length).any(axis=1) | (array[:, 0] >= array[:, 1])]
    if len(bad):
        raise ValueError(
            f"pairs: expected (first_visit, revisit) with 0 <= first_visit < revisit < {length}, got {bad[0].tolist()}"
        )
    return array


def revisit_similarities(
    frames: np.ndarray, pairs: Sequence[tuple[int, int]], extractor: FeatureExtractor
) -> np.ndarray:
    """Cosine similarity of the features of each (first_visit, revisit) frame pair, in [-1, 1]."""
    frames = _check_video(frames)
    array = _check_pairs(pairs, len(frames))
    used = np.unique(array)
    features = extractor(frames[used]).double()
    row = {int(index): i for i, index in enumerate(used)}
    first = features[[row[int(i)] for i in array[:, 0]]]
    again = features[[row[int(j)] for j in array[:, 1]]]
    return torch.nn.functional.cosine_similarity(first, again, dim=1, eps=1e-12).numpy()


def scene_return_consistency(
    frames: np.ndarray, pairs: Sequence[tuple[int, int]], extractor: FeatureExtractor
) -> float:
    """SRC in percent: 100 × the mean cosine similarity over the (first_visit, revisit) pairs (paper: 93.71)."""
    return float(100.0 * revisit_similarities(frames, pairs, extractor).mean())


# --- PSNR drift ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PSNRDrift:
    """Per-chunk PSNR (dB) of a generated video against the real one, and its trend over the chunk index."""

    per_chunk: np.ndarray  # (n_chunks,) dB, chunk 0 first
    slope: float  # dB per chunk, least squares; negative: the video drifts away from the truth
    intercept: float  # dB at chunk 0 on the fitted line


def psnr(generated: np.ndarray, real: np.ndarray) -> float:
    """PSNR (dB) of uint8 frames against real ones over all their pixels, pixels in [0, 1]; 100 dB if equal."""
    a, b = np.asarray(generated), np.asarray(real)
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected two uint8 arrays of one shape, got {a.dtype}{a.shape} and {b.dtype}{b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return float(min(10.0 * np.log10(1.0 / max(mse, 1e-10)), PSNR_MAX_DB))


def psnr_per_chunk(generated: np.ndarray, real: np.ndarray, chunk_frames: int = 8, start: int = 0) -> np.ndarray:
    """PSNR of each whole chunk `[start + k·chunk_frames, start + (k+1)·chunk_frames)` against the real frames.

    `generated` and `real` are aligned videos (T, H, W, 3) uint8; `start` skips the context frames the
    generation began from. A trailing partial chunk is ignored.
    """
    generated, real = _check_video(generated, "generated"), _check_video(real, "real")
    if generated.shape != real.shape:
        raise ValueError(f"expected generated and real videos of one shape, got {generated.shape} and {real.shape}")
    if chunk_frames < 1 or start < 0:
        raise ValueError(f"expected chunk_frames >= 1 and start >= 0, got {chunk_frames!r} and {start!r}")
    n = (len(real) - start) // chunk_frames
    spans = [slice(start + k * chunk_frames, start + (k + 1) * chunk_frames) for k in range(max(n, 0))]
    return np.array([psnr(generated[s], real[s]) for s in spans], dtype=np.float64)


def psnr_drift(generated: np.ndarray, real: np.ndarray, chunk_frames: int = 8, start: int = 0) -> PSNRDrift:
    """Per-chunk PSNR against the real video and its least-squares slope over the chunk index (≥ 2 chunks)."""
    per_chunk = psnr_per_chunk(generated, real, chunk_frames, start)
    if len(per_chunk) < 2:
        raise ValueError(
            f"expected at least 2 whole chunks of {chunk_frames} frames after frame {start} for a drift, "
            f"got {len(per_chunk)} in {len(real)} frames"
        )
    slope, intercept = np.polyfit(np.arange(len(per_chunk), dtype=np.float64), per_chunk, 1)
    return PSNRDrift(per_chunk=per_chunk, slope=float(slope), intercept=float(intercept))


__all__ = [
    "PSNRDrift",
    "SCENE_CUT_DETECTOR",
    "FeatureExtractor",
    "ResNet18Features",
    "SceneCutDetector",
    "VAEEncoderFeatures",
    "load_resnet18_state_dict",
    "make_feature_extractor",
    "psnr",
    "psnr_drift",
    "psnr_per_chunk",
    "resnet18_model",
    "revisit_similarities",
    "scene_cut_frames",
    "scene_cuts",
    "scene_return_consistency",
]
