"""Settings of `cotforge teacher-sim`: one field per command-line flag (`latency_ms` is `--latency-ms`).

Kept apart from the server so that the CLI, the subprocess helper and the tests can build and check a
config without importing FastAPI.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODALITIES = ("image", "video", "audio")
FAULT_RATES = ("rate_429", "rate_500", "rate_reset", "rate_timeout", "rate_malformed", "rate_truncated")


class SimConfig(BaseModel):
    """How the simulator behaves. Unknown keys are errors, so a mistyped flag or JSON key is refused."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="loopback address to bind (127.x, localhost or ::1 only)")
    port: int = Field(default=8765, ge=0, le=65535, description="TCP port; 0 lets SimProcess pick a free one")
    model: str = Field(default="sim/qwen3-omni", description="served model name; must start with sim/")
    seed: int = Field(default=0, description="seed of every random draw: answers, hard clips and faults")
    latency_ms: float = Field(default=200.0, ge=0, description="service time of a request before its tokens, ms")
    per_token_ms: float = Field(default=0.0, ge=0, description="extra service time per completion token, ms")
    capacity: int = Field(default=32, ge=1, description="requests served at once (vLLM's max_num_seqs); the rest wait")
    noise: float = Field(default=0.3, ge=0, description="score noise: std = noise x half the label range / 3")
    flip_rate: float = Field(default=0.05, ge=0, le=1, description="share of answers whose polarity is wrong")
    hard_share: float = Field(default=0.0, ge=0, le=1, description="share of clips always answered with the wrong polarity unless hinted")
    rate_429: float = Field(default=0.0, ge=0, le=1, description="share of requests answered 429 with Retry-After: 0.2")
    rate_500: float = Field(default=0.0, ge=0, le=1, description="share of requests answered 500")
    rate_reset: float = Field(default=0.0, ge=0, le=1, description="share of requests whose connection is dropped unanswered")
    rate_timeout: float = Field(default=0.0, ge=0, le=1, description="share of requests held for timeout_hold_s")
    rate_malformed: float = Field(default=0.0, ge=0, le=1, description="share of requests answered 200 with non-JSON content")
    rate_truncated: float = Field(default=0.0, ge=0, le=1, description="share of requests answered 200 with JSON cut short")
    timeout_hold_s: float = Field(default=30.0, ge=0, description="how long a timeout fault holds a request, s")
    max_model_len: int = Field(default=32768, ge=1, description="context length: prompt + max_tokens must fit")
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=lambda: {"image": 0, "video": 1, "audio": 1},
        description='media items per prompt, as vLLM\'s --limit-mm-per-prompt JSON, e.g. \'{"video":1,"audio":1}\'',
    )
    trust_request_mm_kwargs: bool = Field(
        default=True, description="accept per-request mm_processor_kwargs/media_io_kwargs (vLLM's --trust-request-mm-kwargs)"
    )
    allowed_local_media_path: Path | None = Field(
        default=None, description="folder whose file:// media URLs are read, as vLLM's --allowed-local-media-path"
    )
    log_path: Path | None = Field(default=None, description="JSONL request log, one line per request")
    log_bodies: bool = Field(default=False, description="also write each full request body, media included, to the log")

    @field_validator("model")
    @classmethod
    def _simulated_name(cls, model: str) -> str:
        # Everything the simulator writes ends up labelled with this name; the prefix is what keeps a
        # simulated corpus from ever passing as a real teacher's.
        if not model.startswith("sim/") or model == "sim/":
            raise ValueError(f"the simulator's model name must start with 'sim/', e.g. 'sim/{model}'")
        return model

    @field_validator("host")
    @classmethod
    def _loopback(cls, host: str) -> str:
        # The simulator accepts anything that looks like a request and logs it: it is a test tool,
        # never a service, so it is not reachable from other machines.
        if host == "localhost":
            return host
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the simulator binds loopback addresses only (127.x, localhost, ::1), not {host!r}")
        return host

    @field_validator("limit_mm_per_prompt")
    @classmethod
    def _known_modalities(cls, limits: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(limits) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; use {', '.join(MODALITIES)}")
        if any(count < 0 for count in limits.values()):
            raise ValueError("media limits must be 0 or more")
        return limits

    @model_validator(mode="after")
    def _one_fault_per_request(self) -> SimConfig:
        # One uniform draw picks at most one fault, so the rates are shares of the same requests.
        total = sum(getattr(self, name) for name in FAULT_RATES)
        if total > 1:
            raise ValueError(f"the fault rates add up to {total:g}; their sum must be at most 1")
        return self
