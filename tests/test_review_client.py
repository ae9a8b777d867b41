"""Finding the server and token, and the messages when either is wrong (no server needed)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotforge.cli import app
from cotforge.review import ReviewError
from cotforge.review.client import Target, connect, find_server
from cotforge.review.server import Layout, credentials, server_env

TOKEN = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_flags_then_sdk_variables_then_the_serve_folder(tmp_path: Path, no_env: pytest.MonkeyPatch) -> None:
    layout = Layout(tmp_path / "ls")
    layout.root.mkdir()
    layout.state.write_text(json.dumps({"url": "http://127.0.0.1:9001"}))
    layout.token_file.write_text(TOKEN + "\n")
    assert find_server(None, None, layout.root) == Target("http://127.0.0.1:9001", TOKEN, str(layout.state), str(layout.token_file))
    no_env.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9002/")
    no_env.setenv("LABEL_STUDIO_API_KEY", "env-token")
    found = find_server(None, None, layout.root)
    assert (found.url, found.token) == ("http://127.0.0.1:9002", "env-token")
    assert (found.url_from, found.token_from) == ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")
    found = find_server("http://h:1", "flag-token", layout.root)
    assert (found.url, found.token) == ("http://h:1", "flag-token")
    assert "flag-token" not in repr(found)
    no_env.delenv("LABEL_STUDIO_URL")
    with pytest.raises(ReviewError, match="no Label Studio server given"):
        find_server(None, None, tmp_path / "elsewhere")


def test_generated_secrets_stay_in_0600_files_and_the_server_gets_a_clean_environment(tmp_path: Path, no_env: pytest.MonkeyPatch) -> None:
    no_env.setenv("USERNAME", "someone-else")  # Label Studio would read a bare USERNAME
    no_env.setenv("PORT", "1")
    no_env.chdir(tmp_path)
    layout = Layout(Path("ls"))  # the default --data is relative; Label Studio needs absolute paths
    creds = credentials(layout)
    assert credentials(layout) == creds  # stable across starts: the token only applies when the user is created
    assert layout.token_file.stat().st_mode & 0o777 == 0o600 and len(creds.token) == 40
    env = server_env(layout, creds, 8089)
    assert "USERNAME" not in env and "PORT" not in env
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true" and env["LOCAL_FILES_DOCUMENT_ROOT"] == str(layout.media)
    assert env["HOME"] == str(tmp_path / "ls" / "home") and Path(env["LABEL_STUDIO_BASE_DATA_DIR"]).is_absolute()
    assert creds.scrub(f"token {creds.token} password {creds.password}") == "token *** password ***"


def test_unreachable_server_is_a_clear_error(no_env: pytest.MonkeyPatch) -> None:
    pytest.importorskip("label_studio_sdk")
    with pytest.raises(ReviewError, match=r"cannot reach Label Studio at http://127.0.0.1:\d+ .*review serve"):
        connect(Target(f"http://127.0.0.1:{_closed_port()}", TOKEN))


def test_cli_reports_an_unreachable_server_without_the_token(tmp_path: Path, no_env: pytest.MonkeyPatch) -> None:
    pytest.importorskip("label_studio_sdk")
    no_env.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{_closed_port()}")
    no_env.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    runner = CliRunner()
    for args in (["pull", "--project", "p", "--out", str(tmp_path / "o")],
                 ["report", "--reviews", str(tmp_path / "r"), "--project", "p"]):
        result = runner.invoke(app, ["review", *args])
        assert result.exit_code == 2, result.output
        assert "cannot reach Label Studio" in result.output and TOKEN not in result.output


def test_review_commands_are_registered() -> None:
    result = CliRunner().invoke(app, ["review", "--help"])
    assert result.exit_code == 0
    for command in ("serve", "push", "pull", "apply", "report"):
        assert command in result.output


def test_a_missing_sdk_is_named_with_its_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cotforge.review import require_sdk

    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)
    with pytest.raises(ReviewError, match=r"pip install -e '\.\[review\]'"):
        require_sdk()
