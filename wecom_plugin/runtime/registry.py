"""Job types: name -> handler, delivery semantics and attempt budget.

Handlers are registered with :func:`job_type` by the modules that own the work (built-in jobs
in :mod:`wecom_plugin.jobs.builtin`; extra modules named in ``WECOM_PLUGIN_JOB_MODULES``).
Registering is declarative and has no other side effect.

Delivery semantics, chosen per job type:

* ``AT_LEAST_ONCE``: a job whose holder dies is run again after its lease expires. For idempotent
  work: directory reads, membership changes that re-read state first.
* ``AT_MOST_ONCE``: each side effect is marked ``sending`` (committed) before it is made; a step a
  dead holder left in ``sending`` ends ``unknown`` with an alert and is never repeated
  automatically. For sends that people read.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT_SECONDS = 15 * 60

AT_LEAST_ONCE = "at_least_once"
AT_MOST_ONCE = "at_most_once"

Handler = Callable[..., Any]  # handler(ctx: JobContext) -> dict | None
# batch_handler(ctxs: list[JobContext]) -> {job id: finished}; see JobType.batch_handler
BatchHandler = Callable[..., dict[int, bool]]


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Handler
    delivery: str = AT_LEAST_ONCE
    max_attempts: int | None = None  # None: JOB_MAX_ATTEMPTS
    description: str = ""
    # A run longer than this is treated as hung: its lease is no longer renewed (so another
    # worker can take the job over) and an alert is raised.
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    # The clock may materialise this type's occurrences up to CLOCK_PREPARE_SECONDS before their
    # time; the job is then due at once with the scheduled time and ``early: true`` in its payload,
    # and the handler prepares what it can and queues the time-critical part for the time itself.
    prepares_ahead: bool = False
    # Runs every job of this type that one claim returned, together (fewer transactions when many are
    # due at once). It finishes the jobs it completes itself and returns {job id: True if finished,
    # False if its lease was lost at the end}; every job it leaves out, or all of them if it raises,
    # goes to ``handler`` one by one. So it may take only the common case and leave the rest, and it
    # must leave each job it does not finish where ``handler`` can pick it up safely.
    batch_handler: BatchHandler | None = None
    # How many jobs of this type one batch may hold: a worker whose claim came back full claims more of
    # them, up to this many, for its batch handler.
    batch_size: int = 0


@dataclass(frozen=True)
class PeriodicDefinition:
    """A schedule declared in code. ``key`` is stable across deploys: it is the occurrence key."""

    key: str
    job_name: str
    spec: dict[str, Any]
    payload: dict[str, Any] = field(default_factory=dict)
    misfire_grace_seconds: int = 600
    coalesce: bool = True
    alert_on_miss: bool = False


_JOB_TYPES: dict[str, JobType] = {}
_PERIODIC_PROVIDERS: list[Callable[[Any], Iterable[PeriodicDefinition]]] = []
_LOADED_MODULES: set[str] = set()


def job_type(
    name: str,
    *,
    delivery: str = AT_LEAST_ONCE,
    max_attempts: int | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    prepares_ahead: bool = False,
) -> Callable[[Handler], Handler]:
    """Decorator registering ``handler`` as the job type ``name``."""
    if delivery not in (AT_LEAST_ONCE, AT_MOST_ONCE):
        raise ValueError(f"unknown delivery {delivery!r}")

    def register(handler: Handler) -> Handler:
        existing = _JOB_TYPES.get(name)
        if existing is not None and existing.handler is not handler:
            # Re-importing a module (tests, reloads) re-registers the same function; anything
            # else is two pieces of code claiming one name.
            if existing.handler.__qualname__ != handler.__qualname__:
                raise ValueError(f"job type {name!r} is already registered by {existing.handler!r}")
        doc = (handler.__doc__ or "").strip().splitlines()
        _JOB_TYPES[name] = JobType(
            name, handler, delivery, max_attempts, doc[0] if doc else "", timeout_seconds, prepares_ahead,
            existing.batch_handler if existing is not None else None,
            existing.batch_size if existing is not None else 0,
        )  # fmt: skip
        return handler

    return register


def batch_handler(name: str, *, size: int) -> Callable[[BatchHandler], BatchHandler]:
    """Decorator registering the batch handler of the already registered job type ``name``; ``size`` is the
    most jobs one batch may hold (see ``JobType.batch_size``)."""
    if size < 1:
        raise ValueError("a batch holds at least one job")

    def register(handler: BatchHandler) -> BatchHandler:
        _JOB_TYPES[name] = dataclasses.replace(get(name), batch_handler=handler, batch_size=size)
        return handler

    return register


def periodic_provider(provider: Callable[[Any], Iterable[PeriodicDefinition]]) -> Callable:
    """Register a function ``provider(settings) -> definitions`` that contributes code schedules
    (used by extra job modules; the built-in ones are in ``jobs.clock.periodic_definitions``)."""
    if provider not in _PERIODIC_PROVIDERS:
        _PERIODIC_PROVIDERS.append(provider)
    return provider


def contributed_periodic_definitions(settings: Any) -> list[PeriodicDefinition]:
    return [definition for provider in _PERIODIC_PROVIDERS for definition in provider(settings)]


def get(name: str) -> JobType:
    try:
        return _JOB_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown job type {name!r}; known: {', '.join(sorted(_JOB_TYPES))}") from None


def known_names() -> list[str]:
    return sorted(_JOB_TYPES)


def preparing_names() -> list[str]:
    """The job types whose occurrences the clock materialises ahead of time."""
    return sorted(name for name, t in _JOB_TYPES.items() if t.prepares_ahead)


def load_job_modules(extra: Iterable[str] = ()) -> None:
    """Import the built-in job modules and any extra ones (``WECOM_PLUGIN_JOB_MODULES``)."""
    for module in (
        "wecom_plugin.jobs.builtin",
        "wecom_plugin.jobs.directory",
        "wecom_plugin.jobs.groups_workflow",
        "wecom_plugin.jobs.groups_check",
        "wecom_plugin.jobs.offboarding",
        "wecom_plugin.jobs.customer_groups",
        "wecom_plugin.jobs.calendar",
        "wecom_plugin.jobs.bulletins",
        *extra,
    ):
        if module not in _LOADED_MODULES:
            importlib.import_module(module)
            _LOADED_MODULES.add(module)
