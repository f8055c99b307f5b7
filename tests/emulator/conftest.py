"""Sandbox-tenant conformance tests. The ``emulator`` fixture lives in tests/support/emulator.py
(registered for the whole suite by tests/conftest.py); sample media bytes are re-exported here."""

from tests.support.emulator import AMR, JPG, MP4, PNG

__all__ = ["AMR", "JPG", "MP4", "PNG"]
