"""The consumer's Redis scripts: an atomic fetch, and acknowledgements in one step.

Both keep kombu's own bookkeeping format, so kombu's restore sweep, ``celery inspect``,
``worker/core/queue_stats.py`` and ``worker/core/dead_letters.py`` read what they write:
``unacked`` maps a delivery tag to ``[message, exchange, routing key]`` (JSON), ``unacked_index``
maps it to the time it was delivered (the worker's clock, as kombu's ``QoS.append`` writes it).
No shebang: a script without flags is not refused up front by a full Redis (``noeviction``), and
once its first RPOP took something, its writes are allowed, so a full Redis still drains.
"""

from __future__ import annotations

from hashlib import sha1

# KEYS[1] unacked hash, KEYS[2] unacked index, KEYS[3..] the lists to take from, in order
# (priority first, then queue). ARGV[1] how many messages at most, ARGV[2] the delivery time;
# ARGV[i] for i >= 3 describes KEYS[i]: '+<queue>' when its messages are recorded as
# unacknowledged (a consumer that acknowledges), '-<queue>' when not (no_ack: control replies).
# ARGV[#KEYS + 1 ..]: delivery tags acknowledged, removed first (ACK's work, carried by the
# fetch the freed credit asks for: one call and one round trip instead of two).
# Returns {list position (1 = KEYS[3]), delivery tag ('' when not recorded), raw message, ...}.
# A message without a usable delivery tag (not JSON, not kombu's shape) is recorded under a tag
# of its own, its entry holding the raw text as a string, so it is never in no place at all.
# redis.pcall: a key of another type is skipped, not an error after earlier pops.
FETCH = """
if #ARGV > #KEYS then
  redis.call('ZREM', KEYS[2], unpack(ARGV, #KEYS + 1))
  redis.call('HDEL', KEYS[1], unpack(ARGV, #KEYS + 1))
end
local limit = tonumber(ARGV[1])
local now = ARGV[2]
local out = {}
local taken = 0
for i = 3, #KEYS do
  if taken >= limit then break end
  local items = redis.pcall('RPOP', KEYS[i], limit - taken)
  if type(items) == 'table' and items.err == nil then
    local record = string.sub(ARGV[i], 1, 1) == '+'
    local queue = string.sub(ARGV[i], 2)
    for _, raw in ipairs(items) do
      local tag = ''
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
      end
      out[#out + 1] = i - 2
      out[#out + 1] = tag
      out[#out + 1] = raw
      taken = taken + 1
    end
  end
end
return out
"""

# KEYS[1] unacked hash, KEYS[2] unacked index; ARGV the delivery tags acknowledged.
ACK = """
redis.call('ZREM', KEYS[2], unpack(ARGV))
redis.call('HDEL', KEYS[1], unpack(ARGV))
"""

FETCH_SHA = sha1(FETCH.encode()).hexdigest()
