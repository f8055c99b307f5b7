"""Documented defaults for every setting the plugin reads.

Nothing here is a secret. Every name is also an environment variable of the same name, and the
environment wins over this file; ``create_app(overrides)`` wins over both (tests, the demo).
``wecom_plugin.settings`` parses and validates the merged values; ``config/example.env`` lists them
with one line each.
"""

# --- Mode -----------------------------------------------------------------------------------------
# Sandbox mode: talk to the bundled WeCom emulator, need no secrets, refuse the real WeCom API.
WECOM_SANDBOX = "false"

# --- Database ------------------------------------------------------------------------------------
# Empty means a SQLite file in the instance folder (instance/wecom-plugin.sqlite3), WAL mode.
DATABASE_URL = ""
# Seconds a SQLite connection waits for a lock before giving up (busy_timeout).
SQLITE_BUSY_TIMEOUT = "30"

# --- WeCom -----------------------------------------------------------------------------------------
WECOM_API_BASE_URL = "https://qyapi.weixin.qq.com/cgi-bin/"
# Base URL used in sandbox mode when WECOM_API_BASE_URL is not set (the emulator's default port).
WECOM_SANDBOX_API_BASE_URL = "http://127.0.0.1:8790/cgi-bin/"
# Callback freshness window in seconds; 0 disables the check (warned about outside the sandbox).
WECOM_CALLBACK_MAX_SKEW = "300"
WECOM_TIMEZONE = "Asia/Shanghai"
# small | medium | large: WeCom's hourly appchat message caps depend on the corp's size.
WECOM_CORP_SIZE = "small"
# Share of each WeCom limit the plugin uses (0-1]: the limits are per corp, across all of its apps.
WECOM_BUDGET_HEADROOM = "0.9"

# --- Background runtime ----------------------------------------------------------------------------
# Seconds a claimed job (or inbox row, or occurrence) stays leased without a heartbeat.
JOB_LEASE_SECONDS = "60"
# How many jobs a worker claims in one statement.
WORKER_BATCH_SIZE = "20"
# Seconds an idle worker sleeps between polls (less when a queued job falls due sooner).
WORKER_POLL_INTERVAL = "0.5"
# Threads per worker process: jobs mostly wait on WeCom, so threads give the parallelism
# (an offboarding's 50 chats are updated 8 at a time instead of one after another).
WORKER_THREADS = "8"
# Default attempt budget for jobs that do not declare their own.
JOB_MAX_ATTEMPTS = "5"
# Seconds between clock ticks.
CLOCK_TICK_SECONDS = "5"
# Job types that prepare ahead (bulletins) are materialised this many seconds before their time, so
# the work that can be done early (opening the run, judging the day, rendering) is not done late.
# 0: materialise every occurrence when it is due.
CLOCK_PREPARE_SECONDS = "60"
# Seconds after which a worker or clock heartbeat counts as stale on /status.
HEARTBEAT_STALE_SECONDS = "120"
# Extra modules that register job handlers and periodic definitions (comma separated).
WECOM_PLUGIN_JOB_MODULES = ""

# --- Retention ---------------------------------------------------------------------------------------
# Days to keep finished jobs, fired occurrences and processed callback inbox rows. Dead jobs and
# the audit log are never pruned by this policy.
RETENTION_DAYS = "30"

# --- Directory mirror ------------------------------------------------------------------------------
# Minutes between reconciliations (a full sync that heals what callbacks missed); 0 turns them off.
DIRECTORY_SYNC_MINUTES = "60"
# Directory reads a full sync keeps in flight at once (within WeCom's per-API budget).
DIRECTORY_SYNC_CONCURRENCY = "8"
# Days after a departure before the member's personal data is minimised (PIPL); ids and dates stay.
DIRECTORY_DEPARTED_RETENTION_DAYS = "180"
# Directory field holding the employee number (工号) the HR system offboards by: "alias" (别名) or
# the name of a custom field (自定义字段, extattr). Empty: off (only the imported 工号 table is used).
EMPLOYEE_ID_FIELD = ""

# --- Group governance ------------------------------------------------------------------------------
# Mode on a new install: observe (report only), then dry_run (plan and record), then enforce (change
# chats). `wecom-plugin groups mode` changes it at run time (audited); this is the starting value.
GOVERNANCE_MODE = "observe"
# Daily member check (每日检查), local time in WECOM_TIMEZONE.
MEMBER_CHECK_TIME = "07:00"
# A check planning more removals than this in total stops and waits for `groups confirm`
# (besides the per-chat brake of max(5, 10 %) of a chat's members).
MEMBER_CHECK_BRAKE_TOTAL = "200"
# JSON list of regular expressions for placeholder names (empty: the built-in list, see docs).
REAL_NAME_PLACEHOLDER_PATTERNS = ""
# Days a member failing only the name rule is told before being removed.
REAL_NAME_GRACE_DAYS = "3"
# The general office (综合办公室): userids told of every approval (备案) and asked at review dates.
GENERAL_OFFICE_USERIDS = ""
# Userids who approve group requests when the requesting department has no leader in the mirror.
GROUP_APPROVERS = ""
# Longest exemption from a group's rule, in days.
EXEMPTION_MAX_DAYS = "365"
# Customer groups (客户群) of a leaver go to their direct leader (else a department leader). "wait"
# (the default): nothing moves until the member is deleted from the directory, then
# groupchat/transfer. "onjob": move them at once with groupchat/onjob_transfer (WeCom allows it twice
# per group in 90 days; not undone by a rehire). "off": no customer-group handover (an app not set up
# in 客户联系 → 可调用接口的应用).
CUSTOMER_GROUP_HANDOVER = "wait"
# Also look for customer groups the leaver is an ordinary member of (one groupchat/get per customer
# group of the company, per leaver); each becomes a manual action for that group's owner.
CUSTOMER_GROUP_MEMBER_SCAN = "false"
# Days customer groups may wait for the leaver's deletion from the directory (CUSTOMER_GROUP_HANDOVER=wait)
# before the successor (else the general office) gets one manual action saying they still wait.
CUSTOMER_GROUP_WAIT_DAYS = "7"

# --- Bulletins (通报) and the workday calendar --------------------------------------------------------
# What a "statutory workday" rule does on a day of a year for which neither the pinned calendar
# package nor an imported State Council notice has data: "hold" (send nothing, alert the admins) or
# "weekdays" (treat Monday to Friday as workdays, and say so in every preview and delivery record).
CALENDAR_FALLBACK = "hold"
# Alert the admins this many days before the first day of a year without official calendar data.
CALENDAR_ALERT_DAYS = "30"
# Quiet windows for every bulletin (comma separated HH:MM-HH:MM in WECOM_TIMEZONE), on top of each
# registered group's own; e.g. "12:00-13:30". Empty: only the groups' windows.
BULLETIN_QUIET_WINDOWS = ""
# Default misfire grace: an occurrence not started this many minutes after its time is "missed".
BULLETIN_MISFIRE_GRACE_MINUTES = "10"
# A bulletin whose app messages reach more active members than this (departments with their
# subtrees, tags and named users together), or @all, needs the API scope "bulletins:broadcast" rather
# than "bulletins".
BULLETIN_BROADCAST_DEPARTMENT_SIZE = "200"

# --- Alerts ----------------------------------------------------------------------------------------
# Optional generic webhook (outside WeCom) that receives every new alert as JSON.
ALERT_WEBHOOK_URL = ""
# WeCom userids (comma separated) who receive alerts as app messages.
ALERT_WECOM_USERIDS = ""

# --- Machine API -----------------------------------------------------------------------------------
# Requests per minute per API client, shared across all web workers.
API_RATE_LIMIT_PER_MINUTE = "120"
# Seconds an HMAC-signed request's timestamp may differ from ours.
API_HMAC_MAX_SKEW = "300"
# Number of trusted reverse proxies in front of the web tier (werkzeug ProxyFix x_for/x_proto).
PROXY_FIX_X_FOR = "0"
PROXY_FIX_X_PROTO = "0"

# --- Logging ---------------------------------------------------------------------------------------
LOG_LEVEL = "INFO"
