"""Settings of `cotforge teacher-sim`: one field per command-line flag (`latency_ms` is `--latency-ms`).

The CLI's options are generated from these fields (name, type, default, description, help panel),
so flags and config cannot drift. Kept apart from the server so that the CLI, the subprocess
helper and the tests build and check a config without importing the server.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODALITIES = ("image", "video", "audio")


class Fault(StrEnum):
    """What can go wrong with one request; the rate of each is the config field `rate_<value>`."""

    RATE_LIMIT = "429"
    SERVER_ERROR = "500"
    RESET = "reset"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    CONTROL_CHARS = "control_chars"
    WHITESPACE = "whitespace"
    EMPTY = "empty"

    @property
    def rate_field(self) -> str:
        return f"rate_{self.value}"


class OutageMode(StrEnum):
    """How the server is down during an outage (see `faults.Outage`)."""

    REFUSE = "refuse"
    DROP = "drop"
    ENGINE_DEAD = "engine-dead"
    HANG = "hang"


def _field(default: Any, panel: str, description: str, **limits: Any) -> Any:
    # The panel groups the flag in `--help`; everything a flag shows comes from here.
    return Field(default=default, description=description, json_schema_extra={"panel": panel}, **limits)


_SERVER, _SERVICE, _ANSWERS, _FAULTS, _OUTAGE, _VLLM, _LOG = (
    "Server", "Service time", "Answers", "Faults (shares of requests)", "Outage", "vLLM limits", "Request log",
)


class SimConfig(BaseModel):
    """How the simulator behaves. Unknown keys are errors, so a mistyped flag or JSON key is refused."""

    model_config = ConfigDict(extra="forbid")

    host: str = _field("127.0.0.1", _SERVER, "loopback address to bind (127.x, localhost or ::1 only)")
    port: int = _field(8765, _SERVER, "TCP port; 0 lets SimProcess pick a free one", ge=0, le=65535)
    model: str = _field("sim/qwen3-omni", _SERVER, "served model name; must start with sim/")
    seed: int = _field(0, _SERVER, "seed of every random draw: answers, hard clips, faults and service times")

    latency_ms: float = _field(200.0, _SERVICE, "fixed part of every request's service time, ms", ge=0)
    prefill_tps: float = _field(0.0, _SERVICE, "prompt tokens prefilled per second; 0 leaves prefill out", ge=0)
    per_token_ms: float = _field(0.0, _SERVICE, "time per completion token with the batch at 1 sequence, ms", ge=0)
    batch_slowdown: float = _field(
        0.0, _SERVICE, "how much each further running request lengthens a decode step (0.02: +2% per request)", ge=0
    )
    spread: float = _field(
        0.0, _SERVICE, "sigma of a log-normal factor (mean 1) on each request's work: a long right tail; 0 = none", ge=0, le=3
    )
    capacity: int = _field(32, _SERVICE, "requests served at once (vLLM's max_num_seqs); the rest wait", ge=1)

    noise: float = _field(0.3, _ANSWERS, "score noise: std = noise x half the label range / 3", ge=0)
    flip_rate: float = _field(0.05, _ANSWERS, "share of answers whose polarity is wrong", ge=0, le=1)
    hard_share: float = _field(0.0, _ANSWERS, "share of clips always answered with the wrong polarity unless hinted", ge=0, le=1)

    rate_429: float = _field(0.0, _FAULTS, "answered 429 with Retry-After: 0.2", ge=0, le=1)
    rate_500: float = _field(0.0, _FAULTS, "answered 500", ge=0, le=1)
    rate_reset: float = _field(0.0, _FAULTS, "connection closed without an answer", ge=0, le=1)
    rate_timeout: float = _field(0.0, _FAULTS, "held for timeout_hold_s before being served", ge=0, le=1)
    rate_malformed: float = _field(0.0, _FAULTS, "answered 200 with prose instead of JSON", ge=0, le=1)
    rate_truncated: float = _field(0.0, _FAULTS, "answered 200 with the JSON cut in half (finish_reason length)", ge=0, le=1)
    rate_control_chars: float = _field(
        0.0, _FAULTS, "answered 200 with raw control characters inside the JSON strings, as xgrammar lets through", ge=0, le=1
    )
    rate_whitespace: float = _field(
        0.0, _FAULTS, "answered 200 with JSON trailing into whitespace until max_tokens (finish_reason length)", ge=0, le=1
    )
    rate_empty: float = _field(0.0, _FAULTS, "answered 200 with an empty choices list", ge=0, le=1)
    timeout_hold_s: float = _field(30.0, _FAULTS, "how long a timeout fault holds a request, s", ge=0)

    outage_at: int | None = _field(None, _OUTAGE, "the chat request (1 = the first) from which the server is down", ge=1)
    outage_s: float | None = _field(None, _OUTAGE, "how long the outage lasts, s (unset: for good)", gt=0)
    outage_mode: OutageMode = _field(
        OutageMode.REFUSE, _OUTAGE,
        "refuse: connections refused; drop: requests read, connections closed; engine-dead: 500 to every request "
        "(vLLM after EngineDeadError); hang: requests accepted, never answered until the outage ends",
    )

    max_model_len: int = _field(32768, _VLLM, "context length: prompt + max_tokens must fit; listed in /v1/models", ge=1)
    limit_mm_per_prompt: dict[str, int] = _field(
        {"image": 0, "video": 1, "audio": 1}, _VLLM, "media items per prompt, as vLLM's --limit-mm-per-prompt JSON"
    )
    trust_request_mm_kwargs: bool = _field(
        True, _VLLM, "accept per-request mm_processor_kwargs/media_io_kwargs (vLLM's --trust-request-mm-kwargs)"
    )
    allowed_local_media_path: Path | None = _field(
        None, _VLLM, "folder whose file:// media URLs are read, as vLLM's --allowed-local-media-path"
    )

    log_path: Path | None = _field(None, _LOG, "JSONL request log, one line per chat request")
    log_bodies: bool = _field(False, _LOG, "also write each full request body, media included, to the log")

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
        total = sum(self.fault_rate(fault) for fault in Fault)
        if total > 1:
            raise ValueError(f"the fault rates add up to {total:g}; their sum must be at most 1")
        if self.outage_s is not None and self.outage_at is None:
            raise ValueError("outage_s needs outage_at: the request from which the outage starts")
        return self

    def fault_rate(self, fault: Fault) -> float:
        return getattr(self, fault.rate_field)
