"""Sandbox-tenant conformance tests. The ``emulator`` fixture lives in tests/support/emulator.py
(registered for the whole suite by tests/conftest.py); sample media bytes are re-exported here.

``receivers`` makes callback receivers (tests/emulator/callback_receiver.py, decrypting with
wechatpy) and configures them on the emulator: ``receivers("contact_sync")``, ``receivers("app")``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.emulator import AMR, JPG, MP4, PNG

from .callback_receiver import CallbackReceiver

__all__ = ["AMR", "JPG", "MP4", "PNG"]


@pytest.fixture
def receivers(emulator) -> Iterator[Callable[..., CallbackReceiver]]:
    made: list[CallbackReceiver] = []

    def make(kind: str = "contact_sync", configure: bool = True, **options) -> CallbackReceiver:
        receiver = CallbackReceiver(emulator.corp_id)
        made.append(receiver)
        if configure:
            emulator.admin(
                "callbacks/receivers", receiver=kind, url=receiver.url, token=receiver.token,
                aes_key=receiver.aes_key, **options,
            )  # fmt: skip
        return receiver

    yield make
    emulator.tenant.reset()  # stop deliveries before the receivers go away
    for receiver in made:
        receiver.close()
