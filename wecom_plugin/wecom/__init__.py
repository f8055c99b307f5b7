"""Transport: WeCom's wire protocol (API client, callback crypto, events, budgets).

No Flask and no models here: the transport is tested on its own and against the sandbox tenant
(:mod:`wecom_plugin.emulator`) over real HTTP.
"""
