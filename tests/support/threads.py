"""Run one function on several threads at once and collect what they raised."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(target: Callable[[], object], count: int = 8, *, timeout: float = 60) -> list[BaseException]:
    """Start ``count`` threads running ``target``, join each within ``timeout`` seconds, and return the
    exceptions they raised (empty when all went well), so the test can assert on them."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return errors
