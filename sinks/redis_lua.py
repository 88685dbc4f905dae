"""Lua scripts the Redis online store runs server-side.

Both scripts are atomic in Redis. ``APPLY_BATCH`` applies a batch of events, the partitions'
checkpoints, the counters and the event-time clock in one step, so a crash leaves either all of a
batch or none of it. ``READ_FEATURES`` aggregates each entity's events over the requested windows as of
a time, so only the answers cross the network.

Payloads are the entity's feature fields joined by the unit separator (0x1f), in the order of
``FeatureRegistry.fields_of``. Numbers go back to Python as strings (``%.17g``) so no precision is lost
to Redis' integer conversion of Lua numbers.
"""

APPLY_BATCH = r"""
-- KEYS: checkpoints hash, clock string, counters hash, then (events zset, payload hash) per event
-- ARGV: ttl_ms, trim_before, n_events, [event_id, event_time, payload] * n_events,
--       n_checkpoints, [field, value] * n, n_counters, [name, increment] * n, clock_candidate
local ttl = ARGV[1]
local trim = ARGV[2]
local trim_n = tonumber(trim)
local n_events = tonumber(ARGV[3])
local a = 4
local duplicates = 0
local applied = 0
local touched = {}
local touched_order = {}
for i = 1, n_events do
  local zkey, hkey = KEYS[3 + 2 * i - 1], KEYS[3 + 2 * i]
  local event_id, event_time, payload = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  if tonumber(event_time) >= trim_n then
    if redis.call('HSETNX', hkey, event_id, payload) == 1 then
      redis.call('ZADD', zkey, event_time, event_id)
      applied = applied + 1
    else
      duplicates = duplicates + 1
    end
  end
  if not touched[zkey] then
    touched[zkey] = true
    touched_order[#touched_order + 1] = {zkey, hkey}
  end
end
-- Once per touched entity: drop events older than the trim horizon, refresh the TTL.
for _, pair in ipairs(touched_order) do
  local zkey, hkey = pair[1], pair[2]
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', '(' .. trim, 'LIMIT', 0, 1000)
  if #old > 0 then
    redis.call('HDEL', hkey, unpack(old))
    redis.call('ZREM', zkey, unpack(old))
  end
  redis.call('PEXPIRE', zkey, ttl)
  redis.call('PEXPIRE', hkey, ttl)
end
local n_ckpt = tonumber(ARGV[a]); a = a + 1
for i = 1, n_ckpt do
  redis.call('HSET', KEYS[1], ARGV[a], ARGV[a + 1]); a = a + 2
end
local n_counters = tonumber(ARGV[a]); a = a + 1
for i = 1, n_counters do
  redis.call('HINCRBY', KEYS[3], ARGV[a], ARGV[a + 1]); a = a + 2
end
if duplicates > 0 then redis.call('HINCRBY', KEYS[3], 'duplicate_entity_updates', duplicates) end
local candidate = ARGV[a]
if candidate ~= '' then
  local current = redis.call('GET', KEYS[2])
  if (not current) or tonumber(candidate) > tonumber(current) then redis.call('SET', KEYS[2], candidate) end
end
return {applied, duplicates}
"""

READ_FEATURES = r"""
-- KEYS: (events zset, payload hash) per entity id
-- ARGV: as_of_ms, n_features, [aggregation, window_ms, field_index] * n_features
-- Returns per entity id, per feature: value ('' = null), latest contributing event time ('' = none)
local as_of = tonumber(ARGV[1])
local nf = tonumber(ARGV[2])
local specs, max_w = {}, 0
for i = 1, nf do
  local w = tonumber(ARGV[3 + 3 * (i - 1) + 1])
  specs[i] = {ARGV[3 + 3 * (i - 1)], w, tonumber(ARGV[3 + 3 * (i - 1) + 2])}
  if w > max_w then max_w = w end
end
local function field(payload, index)
  local start = 1
  for _ = 2, index do start = string.find(payload, '\31', start, true) + 1 end
  local stop = string.find(payload, '\31', start, true)
  if stop then return string.sub(payload, start, stop - 1) end
  return string.sub(payload, start)
end
local function num(x) return string.format('%.17g', x) end
local out = {}
for k = 1, #KEYS, 2 do
  local rows = redis.call('ZRANGEBYSCORE', KEYS[k], '(' .. num(as_of - max_w), num(as_of), 'WITHSCORES')
  local n = #rows / 2
  local times, ids, payloads = {}, {}, {}
  for j = 1, n do ids[j] = rows[2 * j - 1]; times[j] = tonumber(rows[2 * j]) end
  local j0 = 1
  while j0 <= n do
    local j1 = math.min(n, j0 + 3999)
    local chunk = redis.call('HMGET', KEYS[k + 1], unpack(ids, j0, j1))
    for j = j0, j1 do payloads[j] = chunk[j - j0 + 1] end
    j0 = j1 + 1
  end
  for i = 1, nf do
    local agg, w, fi = specs[i][1], specs[i][2], specs[i][3]
    local lo = as_of - w
    local first = n + 1
    for j = n, 1, -1 do if times[j] > lo then first = j else break end end
    local count = n - first + 1
    local last = ''
    if count > 0 then last = string.format('%d', times[n]) end
    local value = ''
    if agg == 'count' then
      value = string.format('%d', count)
    elseif agg == 'seconds_since_last' then
      if count > 0 then value = num((as_of - times[n]) / 1000) end
    elseif agg == 'distinct_count' then
      local seen, d = {}, 0
      for j = first, n do
        local v = field(payloads[j], fi)
        if not seen[v] then seen[v] = true; d = d + 1 end
      end
      value = string.format('%d', d)
    else
      local sum, mx = 0, nil
      for j = first, n do
        local v = tonumber(field(payloads[j], fi))
        sum = sum + v
        if mx == nil or v > mx then mx = v end
      end
      if agg == 'sum' then value = num(sum)
      elseif agg == 'max' then if count > 0 then value = num(mx) end
      elseif agg == 'avg' then if count > 0 then value = num(sum / count) end
      else return redis.error_reply('unknown aggregation ' .. agg) end
    end
    out[#out + 1] = value
    out[#out + 1] = last
  end
end
return out
"""
