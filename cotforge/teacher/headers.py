"""What cotforge and its teacher simulator agree on outside the OpenAI API: headers and the simulator's mark.

A real teacher never sees these headers; cotforge sends them only to `cotforge teacher-sim`, which
answers around the gold label they carry. Both sides import the names from here, so they cannot
drift apart. HTTP header names are case-insensitive: servers compare them lower-cased.
"""

from __future__ import annotations

from cotforge.types import Scale

KEY_HEADER = "X-Cotforge-Key"
"""The clip's key (`dataset/video_id/clip_id`)."""
GOLD_HEADER = "X-Cotforge-Gold"
"""The gold label, as a decimal number."""
RANGE_HEADER = "X-Cotforge-Range"
"""The label range as `low,high`, e.g. `-3,3`."""
LANGUAGE_HEADER = "X-Cotforge-Language"
"""`en` or `zh`: the language the answer is written in."""
HINT_HEADER = "X-Cotforge-Hint"
"""On a hinted re-ask only: the gold polarity the prompt gave (negative, neutral or positive)."""
CLIP_HEADERS = (KEY_HEADER, GOLD_HEADER, RANGE_HEADER, LANGUAGE_HEADER, HINT_HEADER)


def simulator_headers(key: str, gold: float, scale: Scale, language: str, hint: str | None = None) -> dict[str, str]:
    """The headers of one request to the simulator (teacher requests and endpoint evaluation alike)."""
    headers = {KEY_HEADER: key, GOLD_HEADER: repr(float(gold)), RANGE_HEADER: f"{scale.low:g},{scale.high:g}", LANGUAGE_HEADER: language}
    if hint:
        headers[HINT_HEADER] = hint
    return headers

SIMULATOR_OWNER = "cotforge-teacher-sim"
"""`owned_by` of every model the simulator lists in `/v1/models` (vLLM says "vllm"): how a client
tells the simulator from a real teacher by what it serves."""
