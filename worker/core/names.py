"""Every shared name in one place: queues, Redis keys and their prefixes."""

from __future__ import annotations

# Celery's own default queue name (its ``task_default_queue``): a stock Celery client that names
# no queue (``send_task``, a ``group``, Flower's async-apply) sends here, so it reaches Courier's
# workers with no routing of its own. ``COURIER_QUEUES`` overrides it (its first name).
DEFAULT_QUEUE = "celery"

KEY_PREFIX = "courier:"
# Record of an issued task id (hash): lets the API tell "never issued" (404) from "queued".
TASK_RECORD_KEY = KEY_PREFIX + "task:{task_id}"
TASK_RECORD_PATTERN = TASK_RECORD_KEY.format(task_id="*")
# Celery's own result key (its Redis backend's ``task_keyprefix``).
CELERY_RESULT_KEY = "celery-task-meta-{task_id}"
# Binary artifacts (uploaded images, resized images, reports) with their metadata (hash).
ARTIFACT_KEY = KEY_PREFIX + "artifact:{artifact_id}"
# Users of the seed API (hash user id -> JSON) and the username -> id index (hash).
USERS_KEY = KEY_PREFIX + "users"
USERNAMES_KEY = KEY_PREFIX + "usernames"
USER_ID_SEQ_KEY = KEY_PREFIX + "users:seq"
# Token bucket of the submit rate limit, per client (API key fingerprint or address).
RATE_LIMIT_KEY = KEY_PREFIX + "ratelimit:{client}"
# Idempotency-Key claims, per client and key digest (24 h).
IDEMPOTENCY_KEY = KEY_PREFIX + "idempotency:{client}:{key}"
# Audit log (capped list of JSON entries).
AUDIT_LOG_KEY = KEY_PREFIX + "audit"
AUDIT_LOG_MAX_ENTRIES = 10_000
# When the periodic reconcile last ran (string, unix time): a beat liveness signal.
RECONCILE_LAST_RUN_KEY = KEY_PREFIX + "reconcile:last_run"
# Where the reconcile's SCAN over task records resumes, when its last run hit its budget.
RECONCILE_CURSOR_KEY = KEY_PREFIX + "reconcile:cursor"

# Dead letters: id -> JSON description (hash), id -> raw message bytes (hash), id -> time (zset).
DEAD_LETTERS_KEY = KEY_PREFIX + "dead-letters"
DEAD_LETTERS_RAW_KEY = KEY_PREFIX + "dead-letters:raw"
DEAD_LETTERS_INDEX_KEY = KEY_PREFIX + "dead-letters:index"

# Task names.
NOOP_TASK = "noop"
SEND_EMAIL_TASK = "send_email"
PROCESS_IMAGE_TASK = "process_image"
GENERATE_REPORT_TASK = "generate_report"
RECONCILE_TASK = "reconcile_records"

# Queue metrics: the lease that elects the one worker exporting cluster-wide queue gauges, and
# the registry of live workers (sorted set hostname -> expiry; hash per worker).
QUEUE_METRICS_LEASE_KEY = KEY_PREFIX + "metrics:queue_leader"
WORKERS_KEY = KEY_PREFIX + "workers"
WORKER_KEY = KEY_PREFIX + "worker:{hostname}"

# kombu's Redis transport: unacknowledged (delivered, reserved or running) messages and the
# separator of priority sub-queues (``<queue>\x06\x16<priority>``).
KOMBU_UNACKED_KEY = "unacked"
KOMBU_PRIORITY_SEP = "\x06\x16"

# The message header carrying the producer's clock at publish time (seconds since the epoch).
ENQUEUED_AT_HEADER = "courier_enqueued_at"
# The message header carrying the fetch's start check (worker/transport/stamp.py); set by the
# worker's own transport only, removed from whatever a producer sends.
START_CHECK_HEADER = "courier_start_check"
# With Sentinel: the delivery tag of the fetch that delivered a task, for its result to be stored
# only where that delivery is recorded (``result_backend.CourierSentinelBackend``). Set by the
# channel, stripped from what producers send, as the start check.
DELIVERY_TAG_HEADER = "courier_delivery_tag"
# kombu's hash of delivered, unacknowledged messages (its Redis transport's ``unacked_key``).
UNACKED_KEY = "unacked"
