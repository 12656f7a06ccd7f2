"""Celery's Redis result backend, with two rules added: a finished status is never overwritten,
and a state Redis could not take never turns into the task's failure.

At-least-once delivery means a message can come back after its task finished (its worker died
before acknowledging). Celery would then store STARTED over SUCCESS; this backend refuses any
write over SUCCESS, FAILURE or REVOKED, atomically, so a status never goes backwards. The first
terminal state wins.

Celery's tracer treats an error raised while it stores a task's SUCCESS as the task's own
failure: it stores FAILURE instead (on the next connection, which may work) and acknowledges
the message. Seen in the Sentinel partition scenario: 2 of 133 tasks read ``failed`` without
having failed, the write of SUCCESS having met a reply redis-py could not parse
(``InvalidResponse``), which Celery's retry (``result_backend_always_retry``) does not retry.
So here every error that says "Redis did not take it, or its answer was lost" is retried
(``exception_safe_to_retry``), and when the retries run out the store raises
``ResultNotStored``, a requeueing ``Reject``: the tracer lets it through untouched (no FAILURE,
no ``task_failure``), the worker gives the message back instead of acknowledging it, and the
task runs again where the finished check (``worker/transport/stamp.py``) decides.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime
from functools import partial
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError, Reject
from kombu.exceptions import EncodeError
from kombu.serialization import registry  # type: ignore[attr-defined]
from kombu.utils import json as kombu_json
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import InvalidResponse

from worker.core import result_carry
from worker.core.names import DELIVERY_TAG_HEADER, UNACKED_KEY
from worker.core.redis_calls import Call, Lua
from worker.core.redis_client import ALLOW_OOM, FencedSSLConnection, is_transient, sentinel_pool

logger = logging.getLogger(__name__)

# Terminal Celery states: a stored state in this set is never overwritten.
TERMINAL_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED})
# The states a task's run ends with, which its acknowledgement's call may carry (``_carried``).
CARRIED_STATES = frozenset({states.SUCCESS, states.FAILURE})
# A request with any of these is not a plain task: its chord, group or callbacks read or follow
# its state, which is then stored as before, by its own call.
_CANVAS_FIELDS = ("chord", "group", "callbacks", "errbacks", "chain")

# Lua shared by every script that writes a Celery state (this backend, the worker's start
# stamp in ``records.py``, purge, dead letters): whether a stored state is final, and the write
# Celery would do (``store_state``: SET and PUBLISH). The ``_unless_finished`` writes keep the
# rule above in one command on the usual path: SET ... GET stores and returns the old value
# together and, in the rare case that was final (a redelivered duplicate), puts it back
# (KEEPTTL), atomically inside the script, instead of a GET before every write. The value put
# back keeps the TTL just set, a full ``result_expires``: a duplicate keeps a finished result
# longer, never shorter. ``replace_unless_finished`` stores without Celery's PUBLISH, for a
# state nobody waits on (STARTED, see ``TaskRecords.mark_started``).
_TERMINAL_LUA = ", ".join(f"{state} = true" for state in sorted(TERMINAL_STATES))
LUA_STATE_HELPERS = f"""
local terminal = {{{_TERMINAL_LUA}}}
local function is_final(value)
  if not value then return false end
  local ok, meta = pcall(cjson.decode, value)
  return ok and type(meta) == 'table' and terminal[meta['status']] == true
end
local function is_finished(key)
  return is_final(redis.call('GET', key))
end
local function replace_unless_finished(key, value, ttl)
  local old
  if tonumber(ttl) > 0 then
    old = redis.call('SET', key, value, 'EX', ttl, 'GET')
  else
    old = redis.call('SET', key, value, 'GET')
  end
  if not is_final(old) then return true end
  redis.call('SET', key, old, 'KEEPTTL')
  return false
end
local function store_state(key, value, ttl)
  if tonumber(ttl) > 0 then
    redis.call('SETEX', key, ttl, value)
  else
    redis.call('SET', key, value)
  end
  redis.call('PUBLISH', key, value)
end
local function store_state_unless_finished(key, value, ttl)
  if not replace_unless_finished(key, value, ttl) then return false end
  redis.call('PUBLISH', key, value)
  return true
end
"""

# allow-oom: a finished task's state must be stored even when Redis is full, or the task could
# never finish and the queue never drain (``redis_client.ALLOW_OOM`` says why that is bounded).
_SET_UNLESS_FINISHED = (
    ALLOW_OOM
    + LUA_STATE_HELPERS
    + """
return store_state_unless_finished(KEYS[1], ARGV[1], ARGV[2]) and 1 or 0
"""
)
# Sent as a ``Call`` (EVALSHA, EVAL when Redis lost it), not through redis-py's
# ``register_script``, whose ``Script.__call__`` imports two modules and checks for pipelines at
# every stored state.
_GUARDED_SET = Lua(_SET_UNLESS_FINISHED)


# kombu's JSON serializer builds a new encoder per value (``json.dumps(..., cls=JSONEncoder)``):
# one instance of the same class encodes every stored state, to the same text.
_JSON_ENCODER = kombu_json.JSONEncoder()


def _kombu_json_serializer() -> bool:
    """Whether the registry's "json" is still kombu's own (nobody registered another)."""
    encoder = registry._encoders.get("json")
    return encoder is not None and encoder[2] is kombu_json.dumps


def lost_to_redis(exc: BaseException) -> bool:
    """Whether a store failed because of Redis, not because of what was stored: Redis was
    unreachable, gave no answer in time, refused for now (full, read-only, a failover), or
    answered with bytes redis-py could not parse (``InvalidResponse``: a reply cut or garbled
    on a dying link; redis-py drops that connection, and whether the write ran is unknown, as
    after a timeout). Storing again is safe: the scripts never overwrite a finished state."""
    return is_transient(exc) or isinstance(exc, (InvalidResponse, OSError))


class ResultNotStored(Reject):
    """A task's state that Redis did not take after every retry: the message goes back to the
    queue (``Reject(requeue=True)``), never acknowledged as if the task had finished. Made
    with ``Reject``'s own arguments: a prefork child pickles it to the worker's main process."""


class CourierRedisBackend(RedisBackend):
    """Selected by the result backend URL ``worker.core.result_backend:CourierRedisBackend+redis://``."""

    _extended: bool | None = None  # ``result_extended``, read once
    _identity: result_carry.RedisIdentity | None = None  # where it writes, worked out once
    #: Carried states need their delivery recorded where they are written (Sentinel's rule).
    _where_delivered = False

    def exception_safe_to_retry(self, exc: Exception) -> bool:
        """Celery retries only kombu's connection errors (with ``result_backend_always_retry``,
        which workers set): an unparsable reply or a refusal failed the task instead."""
        return lost_to_redis(exc) or bool(super().exception_safe_to_retry(exc))

    def store_result(self, task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
        """Celery's, retried as above; in a worker (a ``request``), a state still not stored
        when the retries ran out raises ``ResultNotStored`` instead of Celery's
        ``BackendStoreError``, which the tracer would record as the task's failure.

        A task's final state may instead be handed to the channel that delivered it, to be
        written with its acknowledgement (``_carried``)."""
        # Celery's signature: (task_id, result, state, traceback=None, request=None, ...)
        request = kwargs.get("request", args[1] if len(args) > 1 else None)
        if request is not None and state in CARRIED_STATES and result_carry.carrying():
            traceback = kwargs.get("traceback", args[0] if args else None)
            if self._carried(task_id, result, state, traceback, request, args, kwargs):
                return result
        try:
            return super().store_result(task_id, result, state, *args, **kwargs)
        except Exception as exc:
            # Celery's BackendStoreError once the retries ran out: the last error is its cause.
            cause = exc.__cause__ if isinstance(exc, BackendStoreError) else exc
            if request is None or cause is None or not lost_to_redis(cause):
                raise
            logger.error(
                "task state not stored, its message goes back to the queue: %r",
                cause,
                extra={"task_id": task_id, "state": state},
            )
            message = f"{state} of task {task_id} not stored: {cause!r}"
            raise ResultNotStored(message, requeue=True) from exc

    def _carried(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any,
        request: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> bool:
        """Whether a carrier (the inline pool's channel: ``worker/core/result_carry.py``) took
        this final state of a plain task it delivered, on the same Redis, to write it exactly
        as ``_set`` would (``store_state_unless_finished``, the same TTL), in the call that
        carries the task's acknowledgement. Should that call fail, the carrier stores it again
        through this method's caller (``store_result``, retried), where it is no longer taken."""
        tag = getattr(request, DELIVERY_TAG_HEADER, None)
        if not (isinstance(tag, str) and tag):
            return False
        if any(getattr(request, field, None) for field in _CANVAS_FIELDS):
            return False
        value = self.encode_meta(task_id, self.encode_result(result, state), state, traceback,
                                 request)  # fmt: skip
        carried = result_carry.CarriedState(
            key=self.get_key_for_task(task_id),
            value=value,
            ttl=self._ttl_seconds(),
            delivery_tag=tag,
            where_delivered=self._where_delivered,
            identity=self.redis_identity(),
            store_again=partial(self.store_result, task_id, result, state, *args, **kwargs),
        )
        return result_carry.offer(carried)

    def redis_identity(self) -> result_carry.RedisIdentity:
        """Where this backend writes (``result_carry.redis_identity``)."""
        if self._identity is None:
            backend: Any = self  # celery-types lacks these internals
            sentinel = backend._transport_options.get("sentinel")
            self._identity = result_carry.redis_identity(backend.connparams, sentinel)
        return self._identity

    def _get_result_meta(
        self,
        result: Any,
        state: str,
        traceback: Any,
        request: Any,
        format_date: bool = True,
        encode: bool = False,
    ) -> dict[str, Any]:
        """Celery's meta dict, the same keys in the same order, at a fraction of its cost per
        stored state: Celery looks ``result_extended`` up through ``find_value_for_key`` (a
        walk of the setting's namespaces) and the time through ``app.now()``'s timezone
        helpers at every call; here the setting is read once and the time is taken in UTC and
        converted to the app's zone, which is what ``app.now()`` returns. ``encode`` (args
        and kwargs stored encoded, for database backends) is left to Celery."""
        backend: Any = self  # celery-types lacks these internals
        if encode:
            return super()._get_result_meta(  # type: ignore[misc,no-any-return]
                result, state, traceback, request, format_date, encode
            )
        date_done: Any = None
        if state in states.READY_STATES:
            date_done = datetime.now(UTC).astimezone(backend.app.timezone)
            if format_date:
                date_done = date_done.isoformat()
        meta: dict[str, Any] = {
            "status": state,
            "result": result,
            "traceback": traceback,
            "children": backend.current_task_children(request),
            "date_done": date_done,
        }
        if request and getattr(request, "group", None):
            meta["group_id"] = request.group
        if request and getattr(request, "parent_id", None):
            meta["parent_id"] = request.parent_id
        if self._extended is None:
            self._extended = bool(backend.app.conf.result_extended)
        if self._extended and request:
            delivery = getattr(request, "delivery_info", None)
            meta["name"] = getattr(request, "task", None)
            meta["args"] = getattr(request, "args", None)
            meta["kwargs"] = getattr(request, "kwargs", None)
            meta["worker"] = getattr(request, "hostname", None)
            meta["retries"] = getattr(request, "retries", None)
            meta["queue"] = delivery.get("routing_key") if delivery else None
            stamps = getattr(request, "stamps", None)
            if stamps:
                stamped = request.stamped_headers
                meta["stamped_headers"] = stamped
                meta.update({k: v for k, v in stamps.items() if k in (stamped or ())})
        return meta

    def encode(self, data: Any) -> bytes | str:  # type: ignore[override]  # stubs: bytes; json: str
        """Celery's ``encode`` through kombu's "json" serializer, with one encoder kept."""
        backend: Any = self  # celery-types lacks these internals
        if backend.serializer != "json" or backend.compression or not _kombu_json_serializer():
            encoded: bytes | str = super().encode(data)
            return encoded
        try:
            return _JSON_ENCODER.encode(data)
        except Exception as exc:  # what kombu's registry raises for a value it cannot encode
            raise EncodeError(exc) from exc

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery's version, minus its read-before-write: the script below already refuses to
        overwrite a finished state, atomically, so the extra round trip per state change (a
        large share of a no-op task's cost, make bench) buys nothing."""
        backend: Any = self  # celery-types lacks these internals
        encoded = self.encode_meta(task_id, result, state, traceback, request)
        try:
            backend._set_with_state(self.get_key_for_task(task_id), encoded, state)
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc  # type: ignore[call-arg]
        return result

    def encode_meta(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None
    ) -> bytes | str:
        """The stored value of a state, exactly as Celery would store it."""
        backend: Any = self  # celery-types lacks these internals
        meta = backend._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        return self.encode(meta)

    def started_meta(self, task_id: str, request: Any) -> bytes | str:
        """What Celery's ``task_track_started`` stores; written here by the worker's start
        stamp (``TaskRecords.mark_started``), in the round trip it makes anyway."""
        return self.encode_meta(
            task_id, {"pid": os.getpid(), "hostname": request.hostname}, states.STARTED,
            request=request,
        )  # fmt: skip

    def _set(self, key: str | bytes, value: str | bytes, expires: int | None = None) -> None:
        Call(script=_GUARDED_SET, keys=(key,), args=(value, self._ttl_seconds(expires))).run(
            self.client
        )

    def _ttl_seconds(self, expires: int | None = None) -> int:
        """A stored state's time to live as the scripts take it: ``result_expires`` unless
        the caller gives one; 0 for none."""
        ttl = getattr(self, "expires", None) if expires is None else expires
        return int(ttl or 0)


# KEYS[1] the result, KEYS[2] kombu's unacked hash; ARGV: the state, its TTL, the delivery tag.
# -1: the delivery is not recorded on this server, nothing stored.
_SET_WHERE_DELIVERED = (
    ALLOW_OOM
    + LUA_STATE_HELPERS
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then return -1 end
return store_state_unless_finished(KEYS[1], ARGV[1], ARGV[2]) and 1 or 0
"""
)
_WHERE_DELIVERED = Lua(_SET_WHERE_DELIVERED)


class CourierSentinelBackend(CourierRedisBackend):
    """The same backend on the primary Sentinel names (``COURIER_REDIS_SENTINELS``).

    The URL stays ``COURIER_REDIS_URL`` (database, password, TLS options); the Sentinels come
    from ``result_backend_transport_options["sentinel"]`` (``redis_client.sentinel_options``).
    Celery's own ``sentinel://`` backend would do, but it stores results its own way, without
    the rule above. A write that meets a demoted primary fails as a connection error, which a
    worker retries (``result_backend_always_retry``) on a new connection to the new primary;
    storing a state twice is harmless (the script refuses to overwrite a finished one)."""

    connection_class_ssl: Any = FencedSSLConnection
    _where_delivered = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._storing = threading.local()

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        tag = getattr(request, DELIVERY_TAG_HEADER, None) if request is not None else None
        self._storing.delivery = tag if isinstance(tag, str) and tag else None
        try:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        finally:
            self._storing.delivery = None

    def _set(self, key: str | bytes, value: str | bytes, expires: int | None = None) -> None:
        """A state of a task a Courier channel delivered is stored where that delivery is
        recorded (its ``unacked`` entry), else the connection is suspect: a connection opened to
        a primary that a failover is leaving behind (frozen, cut off: the kernel still completes
        the handshake) reaches a server whose history no longer holds the fetch, and a result
        stored there would be lost at its resync while the task's acknowledgement reaches the
        new primary (seen in ``make chaos``: a task that ran reading ``started`` for good). The
        pool's connections are then dropped and the state stored as before, on a connection to
        the primary the Sentinels name now; a delivery that is legitimately gone (the
        visibility timeout handed the message on, an early acknowledgement) costs that one
        extra attempt."""
        delivery = getattr(self._storing, "delivery", None)
        if delivery is None:
            super()._set(key, value, expires)
            return
        stored: Any = Call(
            script=_WHERE_DELIVERED,
            keys=(key, UNACKED_KEY),
            args=(value, self._ttl_seconds(expires), delivery),
        ).run(self.client)
        if stored != -1:
            return
        logger.warning(
            "result's delivery not recorded on this Redis: asking the Sentinels again",
            extra={"key": bytes_to_str(key)},
        )
        self.client.connection_pool.disconnect()
        super()._set(key, value, expires)

    def _get_pool(self, **params: Any) -> Any:
        backend: Any = self  # celery-types lacks _transport_options
        options = backend._transport_options.get("sentinel")
        if not options:
            raise ValueError("CourierSentinelBackend needs the 'sentinel' transport option")
        return sentinel_pool(options, params)


BACKEND_PATH = f"{__name__}:CourierRedisBackend"
SENTINEL_BACKEND_PATH = f"{__name__}:CourierSentinelBackend"


def backend_url(redis_url: str, sentinel: bool = False) -> str:
    return f"{SENTINEL_BACKEND_PATH if sentinel else BACKEND_PATH}+{redis_url}"
