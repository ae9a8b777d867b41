"""Frames are stored as a player shows them: display rotation (phone clips) and sample aspect ratio applied.

Clips are written with PyAV: the display matrix as container side data (`set_display_rotation`,
with flips for the mirrored orientations), the sample aspect ratio on the encoder. Where the
[dev] extra's ffmpeg binary is there, its own autorotated output is the reference picture.
"""

from __future__ import annotations

import io
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from cotforge.config import MediaConfig
from cotforge.media.decode import decode_clip
from cotforge.types import ClipRef

CFG = MediaConfig(require_audio=False, size=448)
RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


def picture(width: int, height: int) -> np.ndarray:
    """Grey, with a red top-left, green top-right and blue bottom-left corner (coded orientation)."""
    image = np.full((height, width, 3), 128, np.uint8)
    cw, ch = width // 5, height // 5
    image[:ch, :cw], image[:ch, -cw:], image[-ch:, :cw] = RED, GREEN, BLUE
    return image


def write(path: Path, width: int, height: int, rotation: int = 0, hflip: bool = False, sar: Fraction | None = None) -> ClipRef:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10, options={"preset": "ultrafast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        for number in range(20):
            frame = av.VideoFrame.from_ndarray(picture(width, height), format="rgb24")
            frame.pts = number
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return ClipRef(key=f"t/{path.stem}/1", dataset="mosi", video_id=path.stem, clip_id="1", split="train", text="",
                   label=0.0, media_path=str(path), language="en")


def first_frame(ref: ClipRef) -> np.ndarray:
    bundle = decode_clip(ref, CFG)
    image = np.asarray(Image.open(io.BytesIO(bundle.frames[0])).convert("RGB"))
    assert image.shape[:2] == (bundle.frame_height, bundle.frame_width)
    return image


def corner(image: np.ndarray, top: bool, left: bool) -> np.ndarray:
    h, w = image.shape[0] // 10, image.shape[1] // 10
    rows = slice(0, h) if top else slice(-h, None)
    cols = slice(0, w) if left else slice(-w, None)
    return image[rows, cols].reshape(-1, 3).mean(axis=0)


def near(color: np.ndarray, expected: tuple[int, int, int]) -> bool:
    return bool(np.abs(color - np.array(expected)).max() < 40)


def test_phone_clip_turned_a_quarter_is_bundled_upright(tmp_path: Path) -> None:
    # Coded landscape, shown portrait: the display matrix turns it 90 degrees clockwise (ffprobe: rotation -90).
    image = first_frame(write(tmp_path / "phone.mp4", 320, 176, rotation=-90))
    assert image.shape[:2] == (320, 176)  # portrait, at full size (the long side is under 448)
    # turned clockwise: the coded top-left (red) is now top-right, the coded bottom-left (blue) top-left
    assert near(corner(image, top=True, left=False), RED)
    assert near(corner(image, top=True, left=True), BLUE)
    assert near(corner(image, top=False, left=False), GREEN)


def test_anamorphic_clip_is_stored_at_its_display_aspect(tmp_path: Path) -> None:
    # NTSC DVD widescreen: 352x240 coded, pixels 40:33 wide, shown at 16:9
    ref = write(tmp_path / "dvd.mp4", 352, 240, sar=Fraction(40, 33))
    bundle = decode_clip(ref, CFG)
    assert (bundle.frame_width, bundle.frame_height) == (426, 240)
    assert bundle.frame_width / bundle.frame_height == pytest.approx(16 / 9, abs=0.01)
    assert (bundle.video_width, bundle.video_height) == (352, 240)  # the source as coded
    image = first_frame(ref)
    assert near(corner(image, top=True, left=True), RED) and near(corner(image, top=True, left=False), GREEN)


def test_square_pixels_without_rotation_are_left_alone(tmp_path: Path) -> None:
    image = first_frame(write(tmp_path / "plain.mp4", 640, 360))
    assert image.shape[:2] == (252, 448)
    assert near(corner(image, top=True, left=True), RED) and near(corner(image, top=False, left=True), BLUE)


@pytest.mark.parametrize(("rotation", "hflip"), [(90, False), (-90, False), (180, False), (0, True), (90, True), (-90, True)])
def test_every_orientation_matches_what_ffmpeg_shows(tmp_path: Path, rotation: int, hflip: bool) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    ref = write(tmp_path / "turned.mp4", 320, 176, rotation=rotation, hflip=hflip, sar=Fraction(4, 3))
    shown = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", ref.media_path, "-frames:v", "1", "-vf", "scale=iw*sar:ih",
         "-f", "image2pipe", "-vcodec", "png", "-"],
        capture_output=True, check=True,
    ).stdout
    image = first_frame(ref)
    expected = np.asarray(Image.open(io.BytesIO(shown)).convert("RGB").resize(image.shape[1::-1], Image.BILINEAR))
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 6
