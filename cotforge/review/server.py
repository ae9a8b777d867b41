"""Label Studio for `cotforge review serve`: its own virtualenv, HOME and data folder, on 127.0.0.1.

Label Studio pins pyarrow<25, openai<2 and pytz<2023, so it never shares cotforge's environment:
its virtualenv is built once (about a minute) at `$COTFORGE_LABEL_STUDIO_VENV`, or in the user's
cache, so that CI can build it a step ahead. The server gets a minimal environment of its own:
Label Studio reads `LABEL_STUDIO_X`, then `HEARTEX_X`, then a bare `X` (`core/utils/params.py`), so a
stray `USERNAME`, `PASSWORD` or `PORT` in the caller's environment would otherwise leak in.

The admin user and its API token are made non-interactively from Label Studio's own variables
(`LABEL_STUDIO_USERNAME`, `LABEL_STUDIO_PASSWORD`, `LABEL_STUDIO_USER_TOKEN`) when set, else from
secrets generated once and kept in the data folder (mode 0600), never printed or logged. The token
is applied only when the user is first created, so it must stay the same for a data folder's life.
The legacy token needs `LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true`, or a fresh server answers 401.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from cotforge.review import ReviewError

LABEL_STUDIO_VERSION = "1.23.2"
VENV_ENV = "COTFORGE_LABEL_STUDIO_VENV"
DEFAULT_DATA = Path("label-studio")
DEFAULT_PORT = 8089
DEFAULT_USER = "reviewer@cotforge.local"
START_TIMEOUT_S = 240.0
"""A first start runs Django's migrations: ~30 s on 2 cores, longer on a busy machine."""
CLIPS_FOLDER = "clips"
"""Under the media root; a local storage must be a strict subfolder of LOCAL_FILES_DOCUMENT_ROOT."""


@dataclass(frozen=True)
class Layout:
    """Everything a server keeps, under one data folder (made absolute: the server runs in it, and
    Label Studio compares storage paths with its document root as strings)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def home(self) -> Path:
        # Label Studio writes ~/.config/label-studio and ~/.local/share/label-studio whatever its data dir.
        return self.root / "home"

    @property
    def database(self) -> Path:
        return self.root / "data"

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def clips(self) -> Path:
        return self.media / CLIPS_FOLDER

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def state(self) -> Path:
        """server.json: url, pid, media root, user (no secrets), for the other review commands."""
        return self.root / "server.json"

    @property
    def token_file(self) -> Path:
        return self.root / ".token"

    @property
    def password_file(self) -> Path:
        return self.root / ".password"

    def make(self) -> None:
        for folder in (self.home, self.database, self.clips):
            folder.mkdir(parents=True, exist_ok=True)

    def read_state(self) -> dict | None:
        try:
            return json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def default_venv() -> Path:
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cotforge" / f"label-studio-{LABEL_STUDIO_VERSION}"


def venv_executable(venv: Path) -> Path:
    return venv / "bin" / "label-studio"


def ensure_venv(venv: Path, on_line: Callable[[str], None] = lambda line: None) -> Path:
    """Label Studio's executable, building its virtualenv first if needed.

    A marker file stands in the venv while pip runs, so an interrupted build is recognised and
    redone instead of looking ready; a folder cotforge did not make is never deleted.
    """
    exe = venv_executable(venv)
    marker = venv / ".cotforge-building"
    if exe.exists() and not marker.exists():
        return exe
    if venv.exists() and any(venv.iterdir()) and not marker.exists():
        raise ReviewError(f"{venv} exists but holds no label-studio; remove it, or point {VENV_ENV} at another folder")
    shutil.rmtree(venv, ignore_errors=True)
    venv.mkdir(parents=True)
    marker.touch()
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         f"label-studio=={LABEL_STUDIO_VERSION}"],
    ]
    for command in steps:
        tail: list[str] = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip())
                tail = (tail + [line.rstrip()])[-15:]
        if proc.returncode != 0:
            raise ReviewError(f"building Label Studio's virtualenv in {venv} failed; the next `cotforge review serve` "
                              "starts it again. Last lines:\n" + "\n".join(tail))
    marker.unlink()
    return exe


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    token: str

    def scrub(self, text: str) -> str:
        """A text with the secrets blanked, for anything shown from Label Studio's own output."""
        for secret in (self.token, self.password):
            if secret:
                text = text.replace(secret, "***")
        return text


def _secret(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def credentials(layout: Layout) -> Credentials:
    """The admin user: Label Studio's own variables when set, else secrets kept in the data folder."""
    layout.root.mkdir(parents=True, exist_ok=True)
    env = os.environ
    username = env.get("LABEL_STUDIO_USERNAME") or DEFAULT_USER
    password = env.get("LABEL_STUDIO_PASSWORD") or _secret(layout.password_file, lambda: secrets.token_urlsafe(12))
    # DRF token keys are at most 40 characters; Label Studio ignores tokens of 5 or fewer.
    token = env.get("LABEL_STUDIO_USER_TOKEN") or _secret(layout.token_file, lambda: secrets.token_hex(20))
    if not 5 < len(token) <= 40:
        raise ReviewError("LABEL_STUDIO_USER_TOKEN must be 6 to 40 characters long")
    if env.get("LABEL_STUDIO_USER_TOKEN") and not layout.token_file.exists():
        _secret(layout.token_file, lambda: token)
    return Credentials(username, password, token)


def server_env(layout: Layout, creds: Credentials, port: int) -> dict[str, str]:
    """The whole environment of the server process (nothing inherited but PATH and the locale)."""
    keep = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR") if name in os.environ}
    return {
        **keep,
        "HOME": str(layout.home),
        "LABEL_STUDIO_BASE_DATA_DIR": str(layout.database),
        "LABEL_STUDIO_USERNAME": creds.username,
        "LABEL_STUDIO_PASSWORD": creds.password,
        "LABEL_STUDIO_USER_TOKEN": creds.token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(layout.media),
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "PYTHONUNBUFFERED": "1",
    }


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Server:
    """One Label Studio process: start (waiting for /health), check the token, stop by pid."""

    def __init__(self, layout: Layout, venv: Path, port: int = DEFAULT_PORT) -> None:
        self.layout = layout
        self.venv = venv
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.creds = credentials(layout)

    def check_port(self) -> None:
        if not port_in_use(self.port):
            return
        state = self.layout.read_state()
        if state and state.get("port") == self.port and _alive(int(state.get("pid", 0))):
            raise ReviewError(f"Label Studio from {self.layout.root} already runs at {self.url} (pid {state['pid']}; "
                              f"`kill {state['pid']}` stops it)")
        raise ReviewError(f"port {self.port} on 127.0.0.1 is taken by another program; pick another with --port")

    def start(self, on_wait: Callable[[float, str], None] = lambda seconds, line: None) -> None:
        """Start and wait until /health answers and the token is accepted.

        `on_wait(seconds, last_log_line)` is called about twice a second, so a first start (database
        migrations, ~30 s) shows progress rather than silence.
        """
        self.check_port()
        self.layout.make()
        exe = venv_executable(self.venv)
        if not exe.exists():
            raise ReviewError(f"no Label Studio in {self.venv}; run `cotforge review serve` once to build it")
        log = self.layout.log.open("ab")
        self.proc = subprocess.Popen(
            [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(self.port)],
            env=server_env(self.layout, self.creds, self.port), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.layout.root, start_new_session=True,
        )
        log.close()
        started = time.monotonic()
        try:
            self._wait_healthy(started, on_wait)
            self._check_token()
        except BaseException:
            self.stop()
            raise
        self.layout.state.write_text(json.dumps({
            "url": self.url, "port": self.port, "pid": self.proc.pid, "media_root": str(self.layout.media),
            "username": self.creds.username, "venv": str(self.venv), "label_studio": LABEL_STUDIO_VERSION,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2) + "\n", encoding="utf-8")

    def _wait_healthy(self, started: float, on_wait: Callable[[float, str], None]) -> None:
        assert self.proc is not None
        while True:
            elapsed = time.monotonic() - started
            if self.proc.poll() is not None:
                raise ReviewError(f"Label Studio exited with code {self.proc.returncode} while starting; "
                                  f"last lines of {self.layout.log}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if elapsed > START_TIMEOUT_S:
                raise ReviewError(f"Label Studio did not answer /health within {START_TIMEOUT_S:.0f} s; "
                                  f"last lines of {self.layout.log}:\n{self.log_tail()}")
            on_wait(elapsed, self.log_tail(1))
            time.sleep(0.5)

    def _check_token(self) -> None:
        reply = httpx.get(f"{self.url}/api/current-user/whoami", headers={"Authorization": f"Token {self.creds.token}"}, timeout=10.0)
        if reply.status_code == 401:
            raise ReviewError(
                f"the server in {self.layout.root} refused the API token: its user was created with another one "
                "(Label Studio applies LABEL_STUDIO_USER_TOKEN only when it creates the user). Start with the "
                f"original token, or use a new --data folder"
            )
        reply.raise_for_status()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.layout.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return self.creds.scrub("\n".join(text.strip().splitlines()[-lines:]))

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the server's own process group (the Django dev server forks a reloader), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            self._forget()
            return
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self._forget()

    def _forget(self) -> None:
        state = self.layout.read_state()
        if state and self.proc is not None and state.get("pid") == self.proc.pid:
            self.layout.state.unlink(missing_ok=True)
