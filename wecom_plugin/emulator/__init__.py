"""The sandbox tenant: a WeCom API emulator served over real HTTP, for tests, benchmarks and the demo.

It shares no crypto or parsing code with :mod:`wecom_plugin.wecom`, so a bug in one cannot hide
in the other.

Usage::

    from wecom_plugin.emulator.serve import serve, stop
    from wecom_plugin.emulator.state import Tenant

    tenant = Tenant.from_source("generated:200:7")   # or an org YAML/JSON path, or a mapping
    server, thread = serve(tenant, "127.0.0.1", 0)    # server.url == "http://127.0.0.1:PORT/cgi-bin/"
    ...
    stop(server, thread)

Modules: :mod:`.clock` (real/manual clocks), :mod:`.state` (the tenant, flags, change records),
:mod:`.org` (seeding), :mod:`.server` (``create_emulator_app``), :mod:`.admin` (``/_emulator/``),
:mod:`.serve` and :mod:`.httpserver` (threaded HTTP/1.1 server), :mod:`.callbacks` (receivers, delivery,
faults), :mod:`.events` (callback XML), :mod:`.wxcrypto` (callback crypto), :mod:`.ui` (``/_emulator/ui``),
:mod:`.cli` (the ``emulator`` command, ``start_sandbox``). Behaviour, flags and the admin API:
docs/emulator.md.
"""
