"""The seed API's user store: a Redis hash.

Redis is already the one stateful dependency; a hash needs no schema, migration or volume, and
the seed's register/delete needs no queries beyond "by id" and "is this username taken".

Each operation is one Lua script, so nothing can fall between its steps: a registration claims
the name, takes an id and stores the user at once (a name taken uses up no id, and a request
that dies half-way leaves nothing behind). Usernames are unique whatever their case: the index
is keyed by the name in lower case (ASCII, the usernames' alphabet); the user keeps its case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis as AsyncRedis

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


# KEYS: the username index, the id sequence, the users; ARGV: username, email, created_at.
# Returns the new id, or nil when the name is taken.
_REGISTER = """
local folded = string.lower(ARGV[1])
if redis.call('HEXISTS', KEYS[1], folded) == 1 then
  return false
end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], folded, id)
local user = {user_id = id, username = ARGV[1], email = ARGV[2], created_at = ARGV[3]}
redis.call('HSET', KEYS[3], id, cjson.encode(user))
return id
"""

# KEYS: the users, the username index; ARGV: user id. Returns the deleted user's JSON, or nil.
# The index entry goes only if it names this user (an entry of this user's exact case too:
# the index was keyed by the name as given before it was case-insensitive).
_DELETE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return false
end
redis.call('HDEL', KEYS[1], ARGV[1])
local username = cjson.decode(raw)['username']
for _, name in ipairs({string.lower(username), username}) do
  if redis.call('HGET', KEYS[2], name) == ARGV[1] then
    redis.call('HDEL', KEYS[2], name)
  end
end
return raw
"""


class UserStore:
    def __init__(self, client: AsyncRedis) -> None:
        self._register = client.register_script(_REGISTER)
        self._delete = client.register_script(_DELETE)

    async def register(self, username: str, email: str) -> User:
        created_at = datetime.now(UTC).isoformat()
        user_id = await self._register(
            keys=[USERNAMES_KEY, USER_ID_SEQ_KEY, USERS_KEY], args=[username, email, created_at]
        )
        if user_id is None:
            raise UsernameTaken(f"username {username!r} is already registered")
        return User(int(user_id), username, email, created_at)

    async def delete(self, user_id: int) -> User:
        raw = await self._delete(keys=[USERS_KEY, USERNAMES_KEY], args=[user_id])
        if raw is None:
            raise UserNotFound(f"no user with id {user_id}")
        return User(**json.loads(raw))
