"""One settings object for the API and the worker, read from ``COURIER_*`` variables.

Both processes must agree on Redis keys, expiries and limits, so they share this class.
``get_settings()`` is cached rather than a module global so tests can build their own.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.core.names import DEFAULT_QUEUE


class TimeLimits(BaseModel):
    """Soft: SoftTimeLimitExceeded is raised in the task. Hard: its process is killed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    soft: float | None = Field(None, gt=0)
    hard: float | None = Field(None, gt=0)


# Sentinel's own port, for an address given without one.
DEFAULT_SENTINEL_PORT = 26379


class SentinelAddress(BaseModel):
    """One Sentinel, ``host:port`` in ``COURIER_REDIS_SENTINELS`` (``[v6 address]:port`` too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(DEFAULT_SENTINEL_PORT, ge=1, le=65535)

    @classmethod
    def parse(cls, text: str) -> SentinelAddress:
        host, port = text, ""
        if text.startswith("["):  # [::1]:26379
            host, _, rest = text[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"{text!r} is not host:port")
            port = rest[1:]
        elif text.count(":") == 1:
            host, port = text.split(":")
        elif ":" in text:
            raise ValueError(f"{text!r}: write an IPv6 address as [address]:port")
        if not host.strip():
            raise ValueError(f"{text!r}: no host")
        if not port.strip():
            return cls(host=host.strip())
        if not port.strip().isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: the port is not a number from 1 to 65535")
        return cls(host=host.strip(), port=int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Settings(BaseSettings):
    """Every knob of Courier; each field is ``COURIER_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="COURIER_", extra="ignore", frozen=True)

    # --- Redis: broker, result backend and Courier's own keys (one instance) ---
    redis_url: str = Field(
        "redis://localhost:6379/0",
        pattern=r"^rediss?://",
        description="broker, result backend and Courier's own keys (`redis://` or `rediss://`)",
    )
    # Short timeouts turn "Redis is away" into a fast 503 instead of a hung request.
    redis_socket_timeout: float = Field(
        1.0,
        gt=0,
        le=60,
        description="seconds a Redis command may take before the API answers 503",
    )
    redis_connect_timeout: float = Field(
        0.5,
        gt=0,
        le=60,
        description="seconds to connect to Redis",
    )
    redis_memory_high_watermark: float = Field(
        0.9,
        gt=0,
        le=1,
        description=(
            "share of Redis's `maxmemory` from which the API refuses submits (503, "
            "`Retry-After: 5`) and `/readyz` says 503, so what was accepted can drain; no"
            " effect without `maxmemory` (see [Guarantees](guarantees/index.md), Redis "
            "full)"
        ),
    )
    redis_sentinels: Annotated[list[SentinelAddress], NoDecode] = Field(
        default_factory=list,
        description=(
            "Redis Sentinels, comma-separated `host:port` (`[v6 address]:port`; a bare "
            "host means port 26379). With it, every client finds the primary through "
            "Sentinel and follows failovers; the host and port of `COURIER_REDIS_URL` are"
            " then unused, its database, password and TLS options still apply (see "
            "[Guarantees, Redis Sentinel](guarantees/sentinel.md))"
        ),
    )
    redis_sentinel_master: str | None = Field(
        None,
        min_length=1,
        pattern=r"^\S+$",
        description=(
            "the master name the Sentinels monitor (e.g. `courier`); required with "
            "`COURIER_REDIS_SENTINELS`, and only with it"
        ),
    )
    redis_sentinel_password: SecretStr | None = Field(
        None,
        description=(
            "the Sentinels' own password (their `requirepass`), when they have one; may "
            "differ from the data password in `COURIER_REDIS_URL`"
        ),
    )
    redis_min_replicas_ack: int = Field(
        1,
        ge=0,
        le=16,
        description=(
            "with Sentinel: a submit is answered 202 only once this many replicas "
            'acknowledged its write (Redis `WAIT`), else 503 "may have been stored" '
            "(retry with the same `Idempotency-Key`); `0` turns `WAIT` off. Unused "
            "without Sentinel"
        ),
    )
    redis_replica_ack_timeout: float = Field(
        0.5,
        gt=0,
        le=10,
        description="seconds that `WAIT` waits for them",
    )
    redis_failover_audit_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description=(
            "with Sentinel: each API process keeps the writes of the tasks it accepted "
            "this long and, after a failover, writes again those the new primary lacks "
            "(`0`: off); keep it above the Sentinels' time to fail over "
            "(`down-after-milliseconds` + election). About 1.5 KB per accepted task"
        ),
    )
    broker_visibility_timeout: int = Field(
        3600,
        ge=1,
        description=(
            "seconds a delivered, unacknowledged message waits before kombu hands it to "
            "another worker; also the longest accepted `countdown`/`eta`"
        ),
    )
    result_expires: int = Field(
        86400,
        ge=1,
        description="seconds results and task records are kept; after that the id is 404",
    )

    # --- dead letters: messages no worker can run (malformed, or naming an unknown task) ---
    dead_letter_max: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="dead letters kept; beyond it the oldest are dropped",
    )
    dead_letter_max_bytes: int = Field(
        65536,
        ge=256,
        le=16 * 1024 * 1024,
        description=(
            "bytes of a dead letter's raw message kept; a longer one is kept cut "
            "(`truncated`) and cannot be requeued. At most `MAX` x `MAX_BYTES` of Redis "
            "(64 MiB by default)"
        ),
    )

    # --- queues and workers ---
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_QUEUE],
        description=(
            "comma-separated queue names; the first is the default (also Celery's "
            "`task_default_queue`); workers consume all of them. `celery` is Celery's own"
            " default, so a stock Celery client that names no queue reaches the workers "
            "(see [Producers outside Courier](tasks/index.md#producers-outside-courier); "
            "upgrading from the old `default`: list both until it is drained)"
        ),
    )
    worker_prefetch_multiplier: int = Field(
        1,
        ge=1,
        description="messages each pool process reserves ahead",
    )
    retry_backoff_seconds: float = Field(
        1.0,
        gt=0,
        description="base of the exponential retry backoff (`base * 2**retries`)",
    )
    retry_backoff_max_seconds: float = Field(
        600.0,
        gt=0,
        description="cap of one backoff",
    )
    task_soft_time_limit: float | None = Field(
        None,
        gt=0,
        description=(
            "Celery soft time limit (s) for every task: `SoftTimeLimitExceeded` is raised inside it"
        ),
    )
    task_time_limit: float | None = Field(
        None,
        gt=0,
        description=(
            "Celery hard time limit (s) for every task: the task is stopped (prefork: its "
            "pool process is killed; inline: interrupted in the worker's process), it fails "
            "with `TimeLimitExceeded`, the worker serves on"
        ),
    )
    task_time_limits: dict[str, TimeLimits] = Field(
        default_factory=dict,
        description=(
            'per task, over the two above, JSON: `{"process_image": {"soft": 50, "hard": '
            "60}}`; an unknown task name stops the worker at start-up"
        ),
    )
    worker_pool: Literal["prefork", "inline"] = Field(
        "prefork",
        description=(
            "how a worker runs its tasks: `prefork` (Celery's pool, one child process per "
            "`--concurrency`) or `inline` (Courier's `worker/pool`: in the worker's own "
            "process, one task at a time whatever `--concurrency` says, with prefork's time "
            "limits and terminate; see [Worker pools](celery.md#worker-pools-prefork-and-"
            "inline)). The Helm chart sets `inline` (its default `worker.pool`). Sets Celery's "
            "`worker_pool`; `celery worker --pool=<name>` still overrides it, except "
            "`--pool=prefork`, which Celery replaces by the setting"
        ),
    )
    worker_pool_stop_grace_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description=(
            "inline pool: seconds a task has to stop after its hard limit or a terminate; "
            "past it the worker records the outcome and exits with status 70 (a task stuck "
            "in code that never returns to Python)"
        ),
    )
    task_events: bool = Field(
        False,
        description=(
            "workers send task events (`-E`) from the start. Off like Celery's default: "
            "each event is a publish from the worker's main process, its busiest (drain "
            "1.29x with them off, make bench). Flower turns events on in every worker "
            "while it runs (its `--enable_events`, on by default), so Flower still shows "
            "every task"
        ),
    )

    # --- metrics ---
    worker_metrics_port: int = Field(
        9808,
        ge=0,
        le=65535,
        description="the worker's `/metrics`, `/healthz`, `/readyz` port; `0` turns it off",
    )
    worker_metrics_host: str = Field(
        "0.0.0.0",
        description=(
            "the address that port listens on (a pod's every interface, for Prometheus; "
            "`make up`: `127.0.0.1`)"
        ),
    )
    worker_heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "how often a worker renews its entry in the live-worker registry (it expires after 3x)"
        ),
    )
    queue_metrics_lease_seconds: float = Field(
        60.0,
        gt=0,
        description=(
            "lease of the one process (a worker or an API pod) exporting queue gauges; "
            "keep it above the scrape interval"
        ),
    )
    # Serve /metrics on the API port (internal: expose it to the monitoring namespace only).
    metrics_enabled: bool = Field(
        True,
        description="serve `/metrics` on the API port",
    )

    # --- API server (gunicorn) ---
    api_bind: str = Field(
        "0.0.0.0:8000",
        description="gunicorn bind address (`make up`: `127.0.0.1:8000`, see below)",
    )
    api_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="gunicorn worker processes",
    )
    api_graceful_timeout: int = Field(
        30,
        ge=1,
        description="seconds gunicorn lets in-flight requests finish on SIGTERM",
    )
    api_keepalive: int = Field(
        5,
        ge=0,
        description="HTTP keep-alive seconds",
    )

    # --- API security ---
    api_keys: SecretStr | None = Field(
        None,
        description=(
            "comma-separated API keys, or the path of a file holding them one per line (a"
            " mounted Secret; read at start-up). Unset: the API is open and logs a loud "
            "warning"
        ),
    )
    rate_limit_per_second: float = Field(
        0.0,
        ge=0,
        description=(
            "submissions per second per client (API key, or address without keys); `0` = unlimited"
        ),
    )
    rate_limit_burst: int = Field(
        100,
        ge=1,
        description="bucket size of that limit",
    )

    # --- API limits ---
    max_payload_bytes: int = Field(
        256 * 1024,
        ge=1,
        description="largest task request body (413 above)",
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        description="largest artifact upload (413 above)",
    )
    max_payload_depth: int = Field(
        32,
        ge=1,
        le=1000,
        description="deepest JSON nesting of a payload (422 above)",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="total request header size (431 above)",
    )
    max_result_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description=(
            "a task whose JSON result is larger fails (`PermanentError`): results live in Redis"
        ),
    )
    artifact_ttl: int = Field(
        86400,
        ge=1,
        description="seconds uploads and task outputs are kept",
    )

    # --- beat ---
    # How often beat sends reconcile_records (queued tasks whose message vanished -> failed).
    reconcile_interval_seconds: float = Field(
        600.0,
        gt=0,
        description="beat schedule of `reconcile_records`",
    )
    beat_schedule_file: str = Field(
        "/tmp/courier-celerybeat-schedule",
        description="beat's state file (in `/tmp` so a read-only image works)",
    )

    # --- email ---
    email_backend: Literal["console", "smtp"] = Field(
        "console",
        description="`console` (log the message) or `smtp`",
    )
    email_from: str = Field(
        "courier@localhost",
        description="sender address",
    )
    smtp_host: str = Field(
        "localhost",
        description="SMTP server host",
    )
    smtp_port: int = Field(
        25,
        ge=1,
        le=65535,
        description="SMTP server port",
    )
    smtp_user: str | None = Field(
        None,
        description="SMTP login user, when set",
    )
    smtp_password: SecretStr | None = Field(
        None,
        description="SMTP login password, when set",
    )
    smtp_tls: Literal["none", "starttls", "ssl"] = Field(
        "none",
        description="`none`, `starttls` or `ssl`",
    )
    smtp_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds for the SMTP conversation",
    )

    # --- logging ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description=(
            "`DEBUG`, `INFO`, `WARNING`, `ERROR`; logs are JSON lines on stderr (with "
            "`trace_id`/`span_id` when tracing)"
        ),
    )

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        if isinstance(value, str):
            value = [q.strip() for q in value.split(",") if q.strip()]
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            entries = [entry.strip() for entry in value.split(",")]
            if any(not entry for entry in entries) and value.strip():
                raise ValueError("an empty entry in the comma-separated host:port list")
            value = [SentinelAddress.parse(entry) for entry in entries if entry]
        return value

    @model_validator(mode="after")
    def _sentinel_complete(self) -> Settings:
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError(
                "COURIER_REDIS_SENTINELS is set but COURIER_REDIS_SENTINEL_MASTER is not:"
                " name the master the Sentinels monitor"
            )
        if self.redis_sentinel_master and not self.redis_sentinels:
            raise ValueError(
                "COURIER_REDIS_SENTINEL_MASTER is set but COURIER_REDIS_SENTINELS is not:"
                " give the Sentinels' host:port list"
            )
        return self

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.redis_sentinels)

    @field_validator("task_time_limits", mode="before")
    @classmethod
    def _decode_limits(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("queues")
    @classmethod
    def _queues_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one queue name is required")
        return value

    @property
    def default_queue(self) -> str:
        return self.queues[0]

    def time_limits_for(self, task: str) -> TimeLimits:
        specific = self.task_time_limits.get(task, TimeLimits())
        return TimeLimits(
            soft=specific.soft or self.task_soft_time_limit,
            hard=specific.hard or self.task_time_limit,
        )

    def api_key_list(self) -> list[str]:
        """The configured keys; a value naming an existing file is read (comma or line per key)."""
        if self.api_keys is None:
            return []
        raw = self.api_keys.get_secret_value().strip()
        if raw.startswith("/") and Path(raw).is_file():
            raw = Path(raw).read_text()
        return [key.strip() for key in raw.replace("\n", ",").split(",") if key.strip()]


class SettingsError(SystemExit):
    """Raised at start-up so the process exits with a message naming the bad variable."""


def load_settings() -> Settings:
    """Read the environment, turning validation errors into a readable exit."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  COURIER_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else f"  {err['msg']}"  # a rule over several variables names them itself
            for err in exc.errors()
        ]
        raise SettingsError("invalid Courier settings:\n" + "\n".join(lines)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
