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
    redis_url: str = Field("redis://localhost:6379/0", pattern=r"^rediss?://")
    # Short timeouts turn "Redis is away" into a fast 503 instead of a hung request.
    redis_socket_timeout: float = Field(1.0, gt=0, le=60)
    redis_connect_timeout: float = Field(0.5, gt=0, le=60)
    # Submits are refused (503) once Redis holds this share of its maxmemory, so workers always
    # have room to take, acknowledge and finish what was accepted (no effect without maxmemory).
    redis_memory_high_watermark: float = Field(0.9, gt=0, le=1)
    # Redis Sentinel: with both set, every client (API, worker, beat, Flower, health checks) asks
    # these Sentinels for the primary of this master name and follows failovers; the host and
    # port of redis_url are then unused, its database, password and TLS options still apply.
    redis_sentinels: Annotated[list[SentinelAddress], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str | None = Field(None, min_length=1, pattern=r"^\S+$")
    # The Sentinels' own password (their requirepass), when they have one.
    redis_sentinel_password: SecretStr | None = None
    # With Sentinel, a submit is answered 202 only once this many replicas acknowledged its
    # write (Redis WAIT), within redis_replica_ack_timeout seconds, else 503 "may have been
    # stored" (0: no WAIT). Without Sentinel neither applies.
    redis_min_replicas_ack: int = Field(1, ge=0, le=16)
    redis_replica_ack_timeout: float = Field(0.5, gt=0, le=10)
    # With Sentinel, each API process keeps what it wrote for the tasks it accepted in the last
    # this many seconds, and writes again those a failover lost (0: off). Longer than the
    # Sentinels take to fail over (down-after-milliseconds + election + promotion).
    redis_failover_audit_seconds: float = Field(30.0, ge=0, le=3600)
    # kombu restores a delivered-but-unacknowledged message after this many seconds.
    broker_visibility_timeout: int = Field(3600, ge=1)
    result_expires: int = Field(86400, ge=1)

    # --- dead letters: messages no worker can run (malformed, or naming an unknown task) ---
    # The newest this many are kept (older ones are dropped, oldest first), each with at most
    # this many bytes of the raw message (a longer one is kept cut, and cannot be requeued).
    dead_letter_max: int = Field(1000, ge=1, le=1_000_000)
    dead_letter_max_bytes: int = Field(65536, ge=256, le=16 * 1024 * 1024)

    # --- queues and workers ---
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEFAULT_QUEUE])
    worker_prefetch_multiplier: int = Field(1, ge=1)
    retry_backoff_seconds: float = Field(1.0, gt=0)
    retry_backoff_max_seconds: float = Field(600.0, gt=0)
    task_soft_time_limit: float | None = Field(None, gt=0)
    task_time_limit: float | None = Field(None, gt=0)
    # Per task, over the two above: '{"process_image": {"soft": 50, "hard": 60}}'.
    task_time_limits: dict[str, TimeLimits] = Field(default_factory=dict)
    # Task events feed Flower (and event-based exporters); each costs a publish per state change
    # in the worker's main process, its busiest. Off like Celery's default: Flower turns them on
    # in every worker while it runs (its --enable_events, on by default).
    task_events: bool = False

    # --- metrics ---
    # The worker's /metrics and /healthz port (0 turns the server off).
    worker_metrics_port: int = Field(9808, ge=0, le=65535)
    # Its address: every interface in a pod (Prometheus scrapes the pod IP); `make up` binds
    # loopback unless COURIER_LOCAL_BIND says otherwise.
    worker_metrics_host: str = "0.0.0.0"
    # How often a worker renews its entry in the live-worker registry (expires after 3x).
    worker_heartbeat_seconds: float = Field(5.0, gt=0)
    # Lease of the one worker exporting queue gauges; above the scrape interval.
    queue_metrics_lease_seconds: float = Field(60.0, gt=0)
    # Serve /metrics on the API port (internal: expose it to the monitoring namespace only).
    metrics_enabled: bool = True

    # --- API server (gunicorn) ---
    api_bind: str = "0.0.0.0:8000"
    api_workers: int = Field(2, ge=1, le=64)
    api_graceful_timeout: int = Field(30, ge=1)
    api_keepalive: int = Field(5, ge=0)

    # --- API security ---
    # Comma-separated keys, or the path of a file holding them (a mounted Secret); unset = open.
    api_keys: SecretStr | None = None
    # Submissions per second per client (API key, or address without keys); 0 = unlimited.
    rate_limit_per_second: float = Field(0.0, ge=0)
    rate_limit_burst: int = Field(100, ge=1)

    # --- API limits ---
    max_payload_bytes: int = Field(256 * 1024, ge=1)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_payload_depth: int = Field(32, ge=1, le=1000)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    # A task result larger than this fails the task (results live in Redis).
    max_result_bytes: int = Field(1024 * 1024, ge=1)
    artifact_ttl: int = Field(86400, ge=1)

    # --- beat ---
    # How often beat sends reconcile_records (queued tasks whose message vanished -> failed).
    reconcile_interval_seconds: float = Field(600.0, gt=0)
    beat_schedule_file: str = "/tmp/courier-celerybeat-schedule"

    # --- email ---
    email_backend: Literal["console", "smtp"] = "console"
    email_from: str = "courier@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "ssl"] = "none"
    smtp_timeout: float = Field(10.0, gt=0)

    # --- logging ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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
