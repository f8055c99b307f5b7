"""Errors that say whether a retry can help.

The background runtime decides what to do with a failed job from these classes alone, so every
layer (the WeCom transport, services, job handlers) raises one of them or a subclass:

* :class:`PermanentError`: retrying cannot help (bad input, missing permission). The job goes dead.
* :class:`RetryableError`: a later attempt may succeed (network failure, system busy). The job is
  retried with backoff until its attempts run out.
* :class:`RateLimitedError`: the remote side said "later" (WeCom 45009). The job is rescheduled for
  when the limit lifts and the attempt is not counted, so nothing is dropped because of a limit.
* :class:`ConfigurationError`: the deployment is wrong; nothing works until a person fixes it.

Any other exception counts as retryable: a bug may be transient (a deploy in progress) and the
attempt budget bounds the cost.
"""

from __future__ import annotations


class PluginError(Exception):
    """Base class for the plugin's own errors.

    ``side_effect_possible`` says whether the failed operation may still have taken effect
    remotely (a read timeout after the request was sent). At-most-once steps that fail with it
    set end ``unknown`` instead of being retried. Exceptions that are not ``PluginError`` are
    treated as "possible": an unexpected failure proves nothing.
    """

    side_effect_possible = False


class ConfigurationError(PluginError):
    """The deployment is misconfigured; a person must fix a setting."""


class PermanentError(PluginError):
    """Retrying the same operation cannot succeed."""


class RetryableError(PluginError):
    """A later attempt may succeed.

    Args:
        retry_after: seconds to wait at least before the next attempt, if the cause knows.
    """

    def __init__(self, message: str = "", retry_after: float | None = None, *, side_effect_possible: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.side_effect_possible = side_effect_possible


class RateLimitedError(RetryableError):
    """The remote side rate-limited us; retry after ``retry_after`` seconds without spending an attempt."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message, retry_after=retry_after)


class LeaseLostError(PluginError):
    """This process no longer holds the claim it was working under: another holder may have taken over.

    Raised before an external call, so a holder that lost its lease makes no further call.
    """


def describe_error(exc: BaseException, limit: int = 2000) -> str:
    """``"TypeName: message"``, cut to ``limit`` characters: what job rows and step details record."""
    return f"{type(exc).__name__}: {exc}"[:limit]
