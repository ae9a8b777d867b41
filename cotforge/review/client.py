"""Finding Label Studio and checking it before any work: a push that has encoded 500 clips must not
then learn that the token is wrong.

The server and token come from flags, else from the SDK's own variables (`LABEL_STUDIO_URL`,
`LABEL_STUDIO_API_KEY`), else from the folder `cotforge review serve` runs in (its server.json and
its 0600 token file), so a lead on the same machine needs no setup. The SDK accepts both a legacy
token and a personal access token (a JWT refresh token, which it swaps for a bearer token).

Every SDK failure becomes a `ReviewError` whose message says what to do and never holds the token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cotforge.review import ReviewError, require_sdk
from cotforge.review.server import DEFAULT_DATA, Layout

TIMEOUT_S = 120.0
"""Per request: a 1,000-task import or a 5,000-task export takes seconds; a dead server must not hang us."""


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    url_from: str = "--url"  # where each came from, for messages
    token_from: str = "--token"

    def __repr__(self) -> str:  # the token stays out of tracebacks and logs
        return f"Target(url={self.url!r}, url_from={self.url_from!r}, token_from={self.token_from!r})"


def find_server(url: str | None, token: str | None, data: Path | None = None) -> Target:
    """The server and token to use: flags, then LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, then `review serve`'s folder."""
    layout = Layout(data or DEFAULT_DATA)
    state = layout.read_state() or {}
    url_from, token_from = "--url", "--token"
    if not url and os.environ.get("LABEL_STUDIO_URL"):
        url, url_from = os.environ["LABEL_STUDIO_URL"], "LABEL_STUDIO_URL"
    elif not url and state.get("url"):
        url, url_from = state["url"], str(layout.state)
    if not token and os.environ.get("LABEL_STUDIO_API_KEY"):
        token, token_from = os.environ["LABEL_STUDIO_API_KEY"], "LABEL_STUDIO_API_KEY"
    elif not token and layout.token_file.is_file():
        token, token_from = layout.token_file.read_text(encoding="utf-8").strip(), str(layout.token_file)
    if not url:
        raise ReviewError("no Label Studio server given: start one with `cotforge review serve`, or set LABEL_STUDIO_URL "
                          "(or pass --url)")
    if not token:
        raise ReviewError(f"no API token for {url}: set LABEL_STUDIO_API_KEY (or pass --token); `cotforge review serve` "
                          f"keeps its token in {layout.token_file}")
    return Target(url.rstrip("/"), token, url_from, token_from)


def describe(exc: BaseException, what: str, target: Target) -> ReviewError:
    """A clear message for an SDK or HTTP failure (never the token)."""
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, httpx.TimeoutException):
        return ReviewError(f"{what}: Label Studio at {target.url} did not answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.HTTPError):
        return ReviewError(f"cannot reach Label Studio at {target.url} ({type(exc).__name__}: {exc}); is "
                           f"`cotforge review serve` running? (URL from {target.url_from})")
    if isinstance(exc, ApiError):
        if exc.status_code == 401:
            return ReviewError(
                f"Label Studio at {target.url} refused the API token (401; token from {target.token_from}). Use the "
                "token of the server's user: `cotforge review serve` keeps it in DATA/.token; a legacy token also "
                "needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server, a personal access token does not"
            )
        if exc.status_code == 403:
            return ReviewError(f"{what}: the token's user may not do this on {target.url} (403)")
        body = exc.body if isinstance(exc.body, (str, dict, list)) else repr(exc.body)
        return ReviewError(f"{what}: Label Studio answered {exc.status_code}: {str(body)[:500]}".replace(target.token, "***"))
    return ReviewError(f"{what}: {type(exc).__name__}: {exc}".replace(target.token, "***"))


@contextmanager
def api(what: str, target: Target) -> Iterator[None]:
    """Turn any SDK/HTTP failure inside the block into a ReviewError saying `what` failed."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except (ApiError, httpx.HTTPError) as exc:
        raise describe(exc, what, target) from None


def connect(target: Target) -> Any:
    """A checked `label_studio_sdk.LabelStudio`: the server answers and accepts the token."""
    require_sdk()
    from label_studio_sdk import LabelStudio

    with api("connecting", target):
        client = LabelStudio(base_url=target.url, api_key=target.token, timeout=TIMEOUT_S, max_retries=1)
        client.users.whoami()
    return client


def find_project(client: Any, title: str, target: Target) -> Any | None:
    """The project with exactly this title, or None; two with the same title is an error."""
    with api("listing projects", target):
        found = [p for p in client.projects.list(title=title) if p.title == title]
    if len(found) > 1:
        raise ReviewError(f"{len(found)} projects on {target.url} are titled {title!r} (ids "
                          f"{', '.join(str(p.id) for p in found)}); rename all but one")
    return found[0] if found else None


def require_project(client: Any, title: str, target: Target) -> Any:
    project = find_project(client, title, target)
    if project is None:
        with api("listing projects", target):
            titles = sorted(p.title or "" for p in client.projects.list())
        known = ", ".join(repr(t) for t in titles[:20]) or "none"
        raise ReviewError(f"no project titled {title!r} on {target.url} (projects there: {known}); "
                          "push to it first with `cotforge review push`")
    return project
