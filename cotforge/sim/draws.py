"""Every random draw of the simulator comes from here, seeded by text so that it repeats in any process.

A draw is named by what it is for and whose it is (the seed, a request's digest, its attempt), so
the same request gets the same answer, fault and service time on a fresh server, and a corpus made
against the simulator can be made again.
"""

from __future__ import annotations

import random


def seeded(*parts: object) -> random.Random:
    """A generator seeded by the parts' text (string seeds go through SHA-512: stable across processes)."""
    return random.Random(":".join(str(part) for part in parts))
