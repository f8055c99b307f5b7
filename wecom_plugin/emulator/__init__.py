"""The sandbox tenant: a WeCom API emulator served over real HTTP, for tests, benchmarks and the demo.

It shares no crypto or parsing code with :mod:`wecom_plugin.wecom`, so a bug in one cannot hide
in the other.
"""
