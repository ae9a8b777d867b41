"""`cotforge teacher-sim`: its options are SimConfig's fields, and the README's command line serves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import typer
from typer.testing import CliRunner

import cotforge.sim.server
from cotforge.cli import app
from cotforge.sim.config import SimConfig
from cotforge.sim.process import free_port


def _command() -> click.Command:
    # Typer builds its own click classes; the command's params are the options, --help aside.
    return typer.main.get_command(app).commands["teacher-sim"]  # type: ignore[attr-defined]


def test_every_field_is_an_option_with_its_default_and_help() -> None:
    options = {param.name: param for param in _command().params}
    assert set(options) == {*SimConfig.model_fields, "config"}
    for name, field in SimConfig.model_fields.items():
        option = options[name]
        flag = "--" + name.replace("_", "-")
        assert flag in option.opts
        if field.annotation is bool:
            assert option.secondary_opts == ["--no-" + name.replace("_", "-")]
        default = field.get_default(call_default_factory=True)
        text = (option.help or "").replace("\\[", "[")  # escaped for rich markup
        assert text.startswith(field.description or "?")
        shown = "unset" if default is None else json.dumps(default) if isinstance(default, dict) else default
        assert text.endswith(f"[default: {shown:g}]" if isinstance(default, float) else f"[default: {shown}]")
        assert option.default is None  # an option not given leaves the config file's (or the model's) value


def _parsed(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, SimConfig | None]:
    served: list[SimConfig] = []
    monkeypatch.setattr(cotforge.sim.server, "serve", served.append)
    result = CliRunner().invoke(app, ["teacher-sim", *args])
    return result, (served[0] if served else None)


def test_flags_override_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("seed: 3\ncapacity: 2\nspread: 0.4\n")
    result, cfg = _parsed(["--config", str(config), "--capacity", "8", "--rate-429", "0.1", "--no-trust-request-mm-kwargs",
                           "--limit-mm-per-prompt", '{"video": 2, "audio": 2}', "--outage-at", "5", "--outage-mode", "hang"],
                          monkeypatch)
    assert result.exit_code == 0, result.output
    assert cfg is not None
    assert (cfg.seed, cfg.capacity, cfg.spread, cfg.rate_429, cfg.trust_request_mm_kwargs) == (3, 8, 0.4, 0.1, False)
    assert cfg.limit_mm_per_prompt == {"video": 2, "audio": 2}
    assert (cfg.outage_at, cfg.outage_mode, cfg.outage_s) == (5, "hang", None)


def test_the_old_inline_json_config_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    result, cfg = _parsed(["--json-config", '{"seed": 3, "capacity": 2}', "--capacity", "8"], monkeypatch)
    assert result.exit_code == 0, result.output
    assert cfg is not None and (cfg.seed, cfg.capacity) == (3, 8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-429", "0.7", "--rate-500", "0.6"], "their sum must be at most 1"),
        (["--host", "0.0.0.0"], "loopback"),
        (["--limit-mm-per-prompt", "{video"], "not JSON"),
        (["--outage-mode", "explode"], "explode"),
        (["--latency", "5"], "No such option"),
        (["--config", '{"latency": 5}'], "latency: Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_refused_before_serving(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result, cfg = _parsed(args, monkeypatch)
    assert result.exit_code == 2 and cfg is None
    assert message in " ".join(result.output.split())


def test_the_readme_command_line_serves(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    command = [sys.executable, "-m", "cotforge.cli", "teacher-sim", "--port", str(port), "--latency-ms", "5",
               "--capacity", "2", "--noise", "0.2", "--rate-429", "0", "--max-model-len", "4096"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=0.5, trust_env=False).json()
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "teacher-sim did not start"
                time.sleep(0.1)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    [entry] = models["data"]
    assert entry["owned_by"] == "cotforge-teacher-sim" and entry["max_model_len"] == 4096
    assert f"serving sim/qwen3-omni (simulated answers, not a model) on http://127.0.0.1:{port}/v1" in output
