"""How long to wait before the next attempt of a failed job."""

from __future__ import annotations

import random

BASE_DELAY_SECONDS = 5.0
MAX_DELAY_SECONDS = 3600.0


def backoff_delay(attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempt + 1``.

    Exponential (5 s, 10 s, 20 s ... capped at an hour) with "equal jitter" (half fixed, half
    random), so jobs that failed together do not retry together. Never less than ``retry_after``
    when the failure said how long to wait.

    Args:
        attempt: the attempt that just failed, starting at 1.
        retry_after: a lower bound the error carried, if any.
        rng: a seeded generator for tests.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    ceiling = min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * 2 ** min(attempt - 1, 30))
    jitter = (rng or random).uniform(0, ceiling / 2)
    delay = ceiling / 2 + jitter
    return max(delay, retry_after or 0.0)
