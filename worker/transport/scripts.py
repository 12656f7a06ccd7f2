"""The consumer's Redis scripts: an atomic fetch, and acknowledgements in one step; both also
write the final states of the tasks they acknowledge (``worker/core/result_carry.py``).

Both keep kombu's own bookkeeping format, so kombu's restore sweep, ``celery inspect``,
``worker/core/queue_stats.py`` and ``worker/core/dead_letters.py`` read what they write:
``unacked`` maps a delivery tag to ``[message, exchange, routing key]`` (JSON), ``unacked_index``
maps it to the time it was delivered (the worker's clock, as kombu's ``QoS.append`` writes it).
Flagged ``allow-oom``: a full Redis (``noeviction``) must still take a finished task's state, as
the result backend's own script does (``redis_client.ALLOW_OOM`` says why that is bounded), and
still drain: the fetch's other writes only record what its RPOP took (a script without flags
was let through by Redis for the same reason, once its RPOP had written).
"""

from __future__ import annotations

from hashlib import sha1

from worker.core.records import STAMP_START_LUA
from worker.core.redis_client import ALLOW_OOM
from worker.core.result_backend import LUA_STATE_HELPERS

# The final states carried by a call (``result_carry.CarriedState``), written before the
# acknowledgements that follow them in the same call, with the result backend's own helper
# (never over a finished state, same TTL, same PUBLISH). KEYS[1] is the unacked hash. From
# ARGV[first]: their number n, then per state its key, value, TTL and the delivery tag whose
# ``unacked`` entry it needs ('' for none: Sentinel's rule, ``CourierSentinelBackend``).
# Returns the index of the first ARGV after them, and the tags of the states not stored.
_STORE_CARRIED_LUA = """
local function store_carried(first)
  local n = tonumber(ARGV[first]) or 0
  local unstored = {}
  local last = first + 4 * n
  for i = first + 1, last, 4 do
    local needs = ARGV[i + 3]
    if needs ~= '' and redis.call('HEXISTS', KEYS[1], needs) == 0 then
      unstored[#unstored + 1] = needs
    else
      store_state_unless_finished(ARGV[i], ARGV[i + 1], ARGV[i + 2])
    end
  end
  return last + 1, unstored
end
"""

# KEYS[1] unacked hash, KEYS[2] unacked index, KEYS[3..] the lists to take from, in order
# (priority first, then queue). ARGV[1] how many messages at most, ARGV[2] the delivery time;
# ARGV[i] for 3 <= i <= #KEYS describes KEYS[i]: '+<queue>' when its messages are recorded as
# unacknowledged (a consumer that acknowledges), '-<queue>' when not (no_ack: control replies).
# ARGV[#KEYS + 1]: the start stamp's settings ('' or absent: none; ``stamp.StartStamp``).
# ARGV[#KEYS + 2 ..]: the final states carried (``_STORE_CARRIED_LUA``; absent: none), then the
# delivery tags acknowledged, removed first (ACK's work, carried by the fetch the freed credit
# asks for: one call and one round trip instead of two).
# Returns {tags of carried states not stored, list position (1 = KEYS[3]), delivery tag (''
# when not recorded), raw message, start check ('' when not stamped), ...}.
# A message without a usable delivery tag (not JSON, not kombu's shape) is recorded under a tag
# of its own, its entry holding the raw text as a string, so it is never in no place at all.
# redis.pcall: a key of another type is skipped, not an error after earlier pops.
#
# The start stamp (``stamp.py`` says when the channel asks for it): a recorded message of a
# task the settings name, to run now (no ``eta``, no ``expires``, no stamps), gets what the
# worker's ``task_prerun`` stamp would write (``records.STAMP_START_LUA``: the finished check,
# record, start time, attempt count, STARTED), in this script, so that the pool child skips its
# own round trip; its start check ('started', 'revoked' or 'finished') rides back with it.
# The start time is the worker's ARGV[2], read before the request is sent: a message pushed
# meanwhile is enqueued after it, and ``stamp_start`` raises the start to the record's enqueue
# time then (it reads the record anyway), so a status never reads started before enqueued.
# Redis's TIME did the same for one more command per fetch.
FETCH = (
    ALLOW_OOM
    + LUA_STATE_HELPERS
    + STAMP_START_LUA
    + _STORE_CARRIED_LUA
    + """
local now = ARGV[2]
local stamp = ARGV[#KEYS + 1]
if stamp ~= nil and stamp ~= '' then
  stamp = cjson.decode(stamp)
  local names = {}
  for _, name in ipairs(stamp['tasks']) do names[name] = true end
  stamp['tasks'] = names
else
  stamp = nil
end
local acks, unstored = store_carried(#KEYS + 2)
if #ARGV >= acks then
  redis.call('ZREM', KEYS[2], unpack(ARGV, acks))
  redis.call('HDEL', KEYS[1], unpack(ARGV, acks))
end
local function absent(value)
  return value == nil or value == cjson.null
end
local function text(value)
  return type(value) == 'string' and value ~= ''
end
-- The check of a message stamped here, or '' when its worker's child stamps it (or nobody).
local function stamp_message(message, routing_key)
  local headers = type(message) == 'table' and message['headers']
  if type(headers) ~= 'table' then return '' end
  local task_id, name = headers['id'], headers['task']
  if not (text(task_id) and text(name) and stamp['tasks'][name]) then return '' end
  if not (absent(headers['eta']) and absent(headers['expires'])
      and absent(headers['stamped_headers'])) then
    return ''
  end
  local retries = headers['retries']
  if absent(retries) then retries = 0 end
  if type(retries) ~= 'number' then return '' end
  local parts = {stamp['prefix']}
  if text(headers['group']) then
    parts[#parts + 1] = ', "group_id": ' .. cjson.encode(headers['group'])
  end
  if text(headers['parent_id']) then
    parts[#parts + 1] = ', "parent_id": ' .. cjson.encode(headers['parent_id'])
  end
  parts[#parts + 1] = ', "name": ' .. cjson.encode(name) .. ', "args": null, "kwargs": null'
    .. ', "worker": ' .. stamp['worker'] .. ', "retries": ' .. string.format('%d', retries)
    .. ', "queue": ' .. cjson.encode(routing_key) .. ', "task_id": ' .. cjson.encode(task_id)
    .. '}'
  local revoked, finished = stamp_start(stamp['record'] .. task_id, stamp['result'] .. task_id,
    now, table.concat(parts), stamp['ttl'], name, routing_key)
  if finished then return 'finished' end
  if revoked == '1' then return 'revoked' end
  return 'started'
end
local limit = tonumber(ARGV[1])
local out = {unstored}
local taken = 0
for i = 3, #KEYS do
  if taken >= limit then break end
  local items = redis.pcall('RPOP', KEYS[i], limit - taken)
  if type(items) == 'table' and items.err == nil then
    local record = string.sub(ARGV[i], 1, 1) == '+'
    local queue = string.sub(ARGV[i], 2)
    for _, raw in ipairs(items) do
      local tag = ''
      local check = ''
      if record then
        local exchange, routing_key = '', queue
        local ok, message = pcall(cjson.decode, raw)
        local properties = ok and type(message) == 'table' and message['properties']
        local entry
        local given = type(properties) == 'table' and properties['delivery_tag']
        if type(given) == 'string' and given ~= '' then
          tag = given
          local info = properties['delivery_info']
          if type(info) == 'table' then
            if type(info['exchange']) == 'string' then exchange = info['exchange'] end
            if type(info['routing_key']) == 'string' then routing_key = info['routing_key'] end
          end
          entry = '[' .. raw .. ',' .. cjson.encode(exchange) .. ','
            .. cjson.encode(routing_key) .. ']'
        else
          tag = 'courier-undecodable-' .. now .. '-' .. taken .. '-' .. redis.sha1hex(raw)
          entry = cjson.encode({raw, exchange, routing_key})
        end
        redis.call('HSET', KEYS[1], tag, entry)
        redis.call('ZADD', KEYS[2], now, tag)
        if stamp ~= nil and ok then check = stamp_message(message, routing_key) end
      end
      out[#out + 1] = i - 2
      out[#out + 1] = tag
      out[#out + 1] = raw
      out[#out + 1] = check
      taken = taken + 1
    end
  end
end
return out
"""
)

# KEYS[1] unacked hash, KEYS[2] unacked index; ARGV: the final states carried
# (``_STORE_CARRIED_LUA``), then the delivery tags acknowledged. Returns the tags of the carried
# states not stored.
ACK = (
    ALLOW_OOM
    + LUA_STATE_HELPERS
    + _STORE_CARRIED_LUA
    + """
local acks, unstored = store_carried(1)
if #ARGV >= acks then
  redis.call('ZREM', KEYS[2], unpack(ARGV, acks))
  redis.call('HDEL', KEYS[1], unpack(ARGV, acks))
end
return unstored
"""
)

FETCH_SHA = sha1(FETCH.encode()).hexdigest()
ACK_SHA = sha1(ACK.encode()).hexdigest()
