"""Fixtures of the bulletin tests: the plugin on the sandbox tenant with a synced mirror."""

from tests.groups.check_support import tenant_app  # noqa: F401  (a fixture)
