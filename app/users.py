"""The seed API's user store: a Redis hash.

Redis is already the one stateful dependency; a hash needs no schema, migration or volume, and
the seed's register/delete needs no queries beyond "by id" and "is this username taken".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis

from worker.core.names import USER_ID_SEQ_KEY, USERNAMES_KEY, USERS_KEY


@dataclass(frozen=True)
class User:
    user_id: int
    username: str
    email: str
    created_at: str


class UsernameTaken(Exception):
    pass


class UserNotFound(LookupError):
    pass


class UserStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def register(self, username: str, email: str) -> User:
        user_id = int(self._redis.incr(USER_ID_SEQ_KEY))
        # HSETNX claims the username atomically: two concurrent registrations cannot both win.
        if not self._redis.hsetnx(USERNAMES_KEY, username, user_id):
            raise UsernameTaken(f"username {username!r} is already registered")
        user = User(user_id, username, email, datetime.now(UTC).isoformat())
        self._redis.hset(USERS_KEY, str(user_id), json.dumps(asdict(user)))
        return user

    def delete(self, user_id: int) -> User:
        raw = self._redis.hget(USERS_KEY, str(user_id))
        if raw is None:
            raise UserNotFound(f"no user with id {user_id}")
        user = User(**json.loads(raw))
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(USERS_KEY, str(user_id))
        pipe.hdel(USERNAMES_KEY, user.username)
        pipe.execute()
        return user
