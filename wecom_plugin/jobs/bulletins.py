"""Job types of bulletins (通报): firing an occurrence, a deferred part of one, or a resend; and the sends
of an occurrence prepared ahead, at its time (a job type of its own, so workers of an older deploy,
which do not know it, leave it alone)."""

from __future__ import annotations

from wecom_plugin.runtime.registry import AT_MOST_ONCE, batch_handler, job_type


@job_type("bulletins.fire", delivery=AT_MOST_ONCE, max_attempts=8, prepares_ahead=True)
def fire(ctx):
    """Send one bulletin occurrence (or its deferred part, or an operator's resend), each target at most once."""
    from wecom_plugin.services.bulletin_delivery import fire as fire_occurrence

    return fire_occurrence(ctx)


@job_type("bulletins.send", delivery=AT_MOST_ONCE, max_attempts=8)
def send_prepared(ctx):
    """Send an occurrence prepared ahead at its scheduled time, each target at most once."""
    from wecom_plugin.services.bulletin_delivery import fire as fire_occurrence

    return fire_occurrence(ctx)


# 25: at a busy minute a batch's fixed cost (about 25 statements in three transactions) is then about one
# statement per send; its calls are made one after another, so a bigger batch would only delay its last ones.
@batch_handler("bulletins.send", size=25)
def send_prepared_batch(ctxs):
    """The prepared sends of one claimed batch together, in a few transactions (the common case only)."""
    from wecom_plugin.services.bulletin_batch import send_batch

    return send_batch(ctxs)
