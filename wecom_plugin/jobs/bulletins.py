"""Job types of bulletins (通报): firing an occurrence, a deferred part of one, or a resend."""

from __future__ import annotations

from wecom_plugin.runtime.registry import AT_MOST_ONCE, job_type


@job_type("bulletins.fire", delivery=AT_MOST_ONCE, max_attempts=8, prepares_ahead=True)
def fire(ctx):
    """Send one bulletin occurrence (or its deferred part, or an operator's resend), each target at most once."""
    from wecom_plugin.services.bulletin_delivery import fire as fire_occurrence

    return fire_occurrence(ctx)
