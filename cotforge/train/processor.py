"""The Qwen2.5-Omni processor, assembled from its parts so that it needs no torchvision.

transformers' Qwen2-VL video processor is torchvision-based, and PyPI's torchvision breaks beside
the CPU torch wheel (notes: rl.md, deps.md). cotforge decodes and resizes frames itself
(`data.decode_frames` resizes to the patch grid), so the video processor only has to normalise and
patchify: `NumpyVideoProcessor` does exactly what `Qwen2VLVideoProcessor.patchify` does, in numpy.
`AutoProcessor.from_pretrained` of such a processor silently returns a bare tokenizer, so loading
goes through `load_omni_processor`, which rebuilds it from the saved parts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from transformers import (
    AutoTokenizer,
    BatchFeature,
    PreTrainedTokenizerBase,
    Qwen2_5OmniProcessor,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.video_processing_utils import VideoProcessorMixin

from cotforge.resources import resource_dir

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OMNI_TRAIN_TEMPLATE = "qwen2_5_omni_train.j2"
VIDEO_CONFIG = "cotforge_video_processor.json"


def omni_chat_template() -> str:
    """The Qwen2.5-Omni chat template with `{% generation %}` around assistant turns (assistant-only loss)."""
    return (resource_dir("prompts") / OMNI_TRAIN_TEMPLATE).read_text(encoding="utf-8")


class NumpyVideoProcessor(VideoProcessorMixin):
    """Normalise and patchify frames that already sit on the patch grid (T, H, W, 3 uint8 arrays).

    Output matches `Qwen2VLVideoProcessor` for such frames: CLIP normalisation, the last frame
    repeated to a whole temporal patch, and the same patch order, so the vision tower sees what it
    was trained on.
    """

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2, **kwargs: Any) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size

    def preprocess(self, videos: Any, return_tensors: str | None = None, **_: Any) -> BatchFeature:
        flat = _flatten_videos(videos)
        patches, grids = zip(*(self._patchify(video) for video in flat))
        return BatchFeature(
            {"pixel_values_videos": np.concatenate(patches, axis=0), "video_grid_thw": np.array(grids, dtype=np.int64)},
            tensor_type=return_tensors,
        )

    def _patchify(self, video: np.ndarray) -> tuple[np.ndarray, list[int]]:
        frames, height, width, channels = video.shape
        factor = self.patch_size * self.merge_size
        if height % factor or width % factor:
            raise ValueError(
                f"frames are {width}x{height}; they must be multiples of {factor} (resize with data.decode_frames)"
            )
        x = (video.astype(np.float32) / 255.0 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
        x = x.transpose(0, 3, 1, 2)
        if pad := -frames % self.temporal_patch_size:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)], axis=0)
        t = x.shape[0] // self.temporal_patch_size
        gh, gw, p, m = height // self.patch_size, width // self.patch_size, self.patch_size, self.merge_size
        x = x.reshape(t, self.temporal_patch_size, channels, gh // m, m, p, gw // m, m, p)
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(t * gh * gw, channels * self.temporal_patch_size * p * p), [t, gh, gw]

    def to_dict(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size, "merge_size": self.merge_size}


def _flatten_videos(videos: Any) -> list[np.ndarray]:
    """The processor hands videos nested per conversation; the patchifier wants a flat list of arrays."""
    if isinstance(videos, np.ndarray):
        return [videos] if videos.ndim == 4 else [v for v in videos]
    flat: list[np.ndarray] = []
    for item in videos:
        flat.extend(_flatten_videos(item))
    return flat


class OmniProcessor(Qwen2_5OmniProcessor):
    """Qwen2.5-Omni's processor with the numpy video processor accepted in place of the torchvision one."""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor":
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)


def build_omni_processor(
    tokenizer: PreTrainedTokenizerBase,
    feature_extractor: WhisperFeatureExtractor,
    vision_config: Any,
) -> OmniProcessor:
    """A processor whose video patching follows the model's own vision config."""
    video = NumpyVideoProcessor(
        patch_size=vision_config.patch_size,
        temporal_patch_size=vision_config.temporal_patch_size,
        merge_size=vision_config.spatial_merge_size,
    )
    image = Qwen2VLImageProcessorPil(
        patch_size=vision_config.patch_size,
        temporal_patch_size=vision_config.temporal_patch_size,
        merge_size=vision_config.spatial_merge_size,
    )
    template = omni_chat_template()
    tokenizer.chat_template = template
    return OmniProcessor(image_processor=image, video_processor=video, feature_extractor=feature_extractor,
                         tokenizer=tokenizer, chat_template=template)


def save_omni_processor(processor: OmniProcessor, folder: Path) -> None:
    """Tokenizer and feature extractor in their usual files, so a checkpoint folder is self-contained."""
    folder.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(folder)
    processor.feature_extractor.save_pretrained(folder)
    (folder / VIDEO_CONFIG).write_text(json.dumps(processor.video_processor.to_dict(), indent=2) + "\n")


def load_omni_processor(model_dir: str | Path, vision_config: Any) -> OmniProcessor:
    """The processor of a checkpoint (or of a released model folder), rebuilt from its parts."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    return build_omni_processor(tokenizer, feature_extractor, vision_config)


def fit_chunk_length(feature_extractor: WhisperFeatureExtractor, seconds: int) -> int:
    """Set Whisper's window to `seconds` (audio beyond it is cut without a word); returns the old value.

    The feature extractor derives its sample and frame counts from chunk_length at construction,
    so all of them are updated together.
    """
    old = int(feature_extractor.chunk_length)
    feature_extractor.chunk_length = seconds
    feature_extractor.n_samples = seconds * feature_extractor.sampling_rate
    feature_extractor.nb_max_frames = feature_extractor.n_samples // feature_extractor.hop_length
    return old
