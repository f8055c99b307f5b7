import random

import pytest

from wecom_plugin.domain.retry import MAX_DELAY_SECONDS, backoff_delay


def test_backoff_grows_exponentially_within_jitter_bounds():
    rng = random.Random(7)
    for attempt, ceiling in [(1, 5), (2, 10), (3, 20), (4, 40)]:
        delay = backoff_delay(attempt, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_backoff_is_capped_and_respects_retry_after():
    assert backoff_delay(60, rng=random.Random(1)) <= MAX_DELAY_SECONDS
    assert backoff_delay(1, retry_after=120, rng=random.Random(1)) == 120


def test_attempts_start_at_one():
    with pytest.raises(ValueError):
        backoff_delay(0)
