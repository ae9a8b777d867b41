"""Human review of DC chains in Label Studio, and the round trip back into a reviewed corpus.

One job per module, in the order a review round goes:

- `server`: Label Studio in its own virtualenv, HOME and data folder on 127.0.0.1 (`review serve`).
- `client`: finds the server and token, checks both before any work, turns API errors into messages.
- `sample`: which rows reviewers see (random, or risk: where the corpus is most likely wrong).
- `media`: browser-playable H.264/AAC MP4 per clip, content-addressed, encoded once.
- `labeling` + `labeling_config.xml`: the review form, and the task and teacher pre-fill for a row.
- `push`, `pull`, `apply`, `report`: the four steps of a round.

Everything that talks to the server goes through `label-studio-sdk` (the `[review]` extra); the
server itself never shares cotforge's environment (it pins pyarrow<25 and openai<2).
"""

from __future__ import annotations


class ReviewError(Exception):
    """A review step cannot go on (server unreachable, token refused, project missing, bad folder);
    the message says what to do. Never carries the API token."""


def require_sdk() -> None:
    """Fail early with the pip line when the `[review]` extra is missing."""
    try:
        import label_studio_sdk  # noqa: F401
    except ImportError as exc:
        raise ReviewError(
            "the review commands talk to Label Studio through label-studio-sdk: pip install -e '.[review]'"
        ) from exc
