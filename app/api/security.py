"""API keys and the per-client submit rate limit.

Keys are compared in constant time against every configured key, so timing reveals neither a
key nor which one matched. The rate limit is a token bucket kept in Redis, shared by every API
process and pod; it only guards submissions, the one thing that costs workers time.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis as AsyncRedis

from worker.core.names import RATE_LIMIT_KEY

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key")


class Unauthenticated(Exception):
    """No key presented (401)."""


class Forbidden(Exception):
    """A key was presented, and it is not one of ours (403)."""


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"submit rate limit exceeded; retry after {retry_after:.1f} s")
        self.retry_after = retry_after


def key_matches(presented: str, keys: list[str]) -> bool:
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return matched


async def client_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    header_key: Annotated[str | None, Security(api_key_header)],
) -> str:
    """Authenticate; returns who the client is (a key fingerprint, or its address)."""
    keys: list[str] = request.app.state.api_keys
    presented = credentials.credentials if credentials else header_key
    return _identify(request, keys, presented)


def _identify(request: Request, keys: list[str], presented: str | None) -> str:
    if not keys:
        return f"addr:{request.client.host if request.client else 'unknown'}"
    if not presented:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
    if not key_matches(presented, keys):
        raise Forbidden("invalid API key")
    return "key:" + hashlib.sha256(presented.encode()).hexdigest()[:16]


def client_identity_from_headers(request: Request) -> str:
    """``client_identity`` with its arguments read as ``bearer`` and ``api_key_header`` read
    them (the first ``Authorization`` and ``X-API-Key`` headers, latin-1), in one pass over the
    raw headers: the two schemes build Starlette's ``Headers`` and search it once each, and a
    model for the credentials, a visible share of a submit's instructions. Without configured
    keys no key is read: none is compared."""
    keys: list[str] = request.app.state.api_keys
    if not keys:
        return _identify(request, keys, None)
    authorization = header_key = None
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"x-api-key" and header_key is None:
            header_key = value
    return _identify(request, keys, _bearer_key(authorization) or _decoded(header_key))


def _bearer_key(authorization: bytes | None) -> str | None:
    """What ``bearer`` gives as ``credentials.credentials``: None unless the header is
    ``Bearer <credentials>`` (scheme in any case, credentials not blank)."""
    if not authorization:
        return None
    scheme, _, param = authorization.decode("latin-1").partition(" ")
    credentials = param.strip()
    if not (scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


def _decoded(header_key: bytes | None) -> str | None:
    return header_key.decode("latin-1") if header_key else None


ClientDep = Annotated[str, Depends(client_identity)]

# Token bucket: KEYS[1] the bucket; ARGV rate/s, burst. Returns {allowed, retry_after_ms}.
# "now" is Redis's clock: every API pod shares the bucket, and their own clocks disagree (one
# ahead refilled it, one behind saw it in the future). TIME before a write is fine since
# Redis 5, which replicates a script's effects rather than the script.
_TAKE_TOKEN = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait}
"""


class RateLimiter:
    def __init__(self, client: AsyncRedis, per_second: float, burst: int) -> None:
        self._per_second = per_second
        self._burst = burst
        self._take = client.register_script(_TAKE_TOKEN)

    @property
    def enabled(self) -> bool:
        return self._per_second > 0

    async def check(self, identity: str) -> None:
        if not self.enabled:
            return
        allowed, wait_ms = await self._take(
            keys=[RATE_LIMIT_KEY.format(client=identity)],
            args=[self._per_second, self._burst],
        )
        if not allowed:
            raise RateLimited(math.ceil(int(wait_ms) / 100) / 10)


async def rate_limited_client(request: Request, client: ClientDep) -> str:
    limiter: RateLimiter = request.app.state.rate_limiter
    if limiter.enabled:  # not even a coroutine when the limit is off
        await limiter.check(client)
    return client


SubmitterDep = Annotated[str, Depends(rate_limited_client)]
