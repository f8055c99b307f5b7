"""Persistence: SQLAlchemy models grouped by aggregate. No HTTP, no policy.

Importing this package registers every model on the shared metadata (Alembic needs them all).
"""

from wecom_plugin.models.api_clients import ApiClient, ApiKey, RateCounter
from wecom_plugin.models.base import Base
from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery, BulletinRun
from wecom_plugin.models.calendar import CalendarDay, CalendarYear
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.customer_groups import CustomerGroupHandover, CustomerGroupScan
from wecom_plugin.models.directory import (
    Department,
    DirectoryChange,
    DirectoryOutbox,
    DirectorySync,
    Person,
    Tag,
    TagMember,
)
from wecom_plugin.models.employee_numbers import EmployeeNumber
from wecom_plugin.models.groups import (
    ChatChange,
    ChatMember,
    GovernanceSetting,
    GovernedGroup,
    GroupExemption,
    GroupVersion,
    ManualAction,
    MembershipCheck,
    Offboarding,
)
from wecom_plugin.models.inbox import CallbackInbox
from wecom_plugin.models.jobs import Job, JobStep, Occurrence, ProcessHeartbeat, Schedule
from wecom_plugin.models.ops import Alert, AuditEvent
from wecom_plugin.models.tokens import WeComToken

__all__ = [
    "Bulletin",
    "BulletinDelivery",
    "BulletinRun",
    "CalendarDay",
    "CalendarYear",
    "CustomerGroupHandover",
    "CustomerGroupScan",
    "Offboarding",
    "MembershipCheck",
    "ManualAction",
    "GroupVersion",
    "GroupExemption",
    "GovernedGroup",
    "GovernanceSetting",
    "ChatMember",
    "ChatChange",
    "Alert",
    "ApiClient",
    "ApiKey",
    "AuditEvent",
    "CallbackInbox",
    "Base",
    "ClaimState",
    "Department",
    "DirectoryChange",
    "DirectoryOutbox",
    "DirectorySync",
    "EmployeeNumber",
    "Job",
    "JobStep",
    "Occurrence",
    "Person",
    "ProcessHeartbeat",
    "RateCounter",
    "Schedule",
    "Tag",
    "TagMember",
    "WeComToken",
]
