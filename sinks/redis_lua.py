"""Lua scripts the Redis online store runs server-side.

Every script is atomic in Redis. ``RECORD_LAYOUT`` fixes a generation's layout at its first write.
``APPLY_BATCH`` applies a batch of events, the partitions' checkpoints, the counters and the event-time
clock in one step, so a crash leaves either all of a batch or none of it. ``READ_FEATURES`` reads the
clock, checks ``as_of`` against the retention and aggregates each entity's events over the requested
windows, so one round trip answers a request and only the answers cross the network.

An entity's events live in one sorted set: score = event_time, member = the event id followed by the
entity's feature fields, joined by the unit separator (0x1f), fields in the order of the generation's
recorded layout (``hw:{gen}:meta:layout``, see :class:`streams.features.EntityLayout`). Numbers go back
to Python as strings (``%.17g``) so no precision is lost to Redis' integer conversion of Lua numbers.

Ids and field values never contain control characters (``schemas.validate`` refuses them), so the
separator 0x1f cannot occur inside them. Lua's ``unpack`` is limited to a few thousand values,
so variadic calls go in chunks of ``CHUNK``.
"""

APPLY_BATCH = r"""
-- KEYS: checkpoints hash, clock string, counters hash, seen zset, then one events zset per entity id
-- ARGV: ttl_ms, trim_before, n_events, the n event ids, their n event times,
--       n_keys, per key: n_entries, then [score (event time), member] * n_entries;
--       n_checkpoints, [field, value] * n, n_counters, [name, increment] * n, clock_candidate
-- A member is its event's id, then 0x1f and the entity's fields. Every value is its own argument, so
-- nothing is parsed here, and a key's entries go to ZADD straight from ARGV when no event of the
-- batch is skipped (the usual case).
local CHUNK = 1000
local ttl, trim_arg = ARGV[1], ARGV[2]
local trim = tonumber(trim_arg)
local seen = KEYS[4]
local n = tonumber(ARGV[3])
local ids0, times0 = 3, 3 + n  -- event i: id ARGV[ids0 + i], time ARGV[times0 + i]
-- An event is skipped whole when it is older than the kept horizon (no servable read reaches it) or
-- its id was applied before (first wins).
local skipped, skipping, duplicates, beyond = {}, false, 0, 0
local kept = {}
for i = 1, n do
  if tonumber(ARGV[times0 + i]) < trim then
    skipped[ARGV[ids0 + i]] = true; skipping = true; beyond = beyond + 1
  else
    kept[#kept + 1] = i
  end
end
local added = {}
for c = 1, #kept, CHUNK do
  local last = math.min(#kept, c + CHUNK - 1)
  local ids = {}
  for j = c, last do ids[#ids + 1] = ARGV[ids0 + kept[j]] end
  local scores = redis.call('ZMSCORE', seen, unpack(ids))
  for j = c, last do
    local i = kept[j]
    if scores[j - c + 1] then
      skipped[ARGV[ids0 + i]] = true; skipping = true; duplicates = duplicates + 1
    else
      added[#added + 1] = ARGV[times0 + i]; added[#added + 1] = ARGV[ids0 + i]
    end
  end
end
for c = 1, #added, 2 * CHUNK do
  redis.call('ZADD', seen, unpack(added, c, math.min(#added, c + 2 * CHUNK - 1)))
end
local a = 4 + 2 * n
local n_keys = tonumber(ARGV[a]); a = a + 1
for k = 1, n_keys do
  local key = KEYS[4 + k]
  local m = tonumber(ARGV[a])
  local scored0 = a + 1  -- entry j (from 0): score ARGV[scored0 + 2j], member ARGV[scored0 + 2j + 1]
  if not skipping then
    for c = 0, m - 1, CHUNK do
      local last = math.min(m - 1, c + CHUNK - 1)
      redis.call('ZADD', key, unpack(ARGV, scored0 + 2 * c, scored0 + 2 * last + 1))
    end
  else
    local members = {}
    for j = 0, m - 1 do
      local member = ARGV[scored0 + 2 * j + 1]
      local cut = string.find(member, '\31', 1, true)
      if not skipped[cut and string.sub(member, 1, cut - 1) or member] then
        members[#members + 1] = ARGV[scored0 + 2 * j]
        members[#members + 1] = member
      end
    end
    for c = 1, #members, 2 * CHUNK do
      redis.call('ZADD', key, unpack(members, c, math.min(#members, c + 2 * CHUNK - 1)))
    end
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. trim_arg)
  redis.call('PEXPIRE', key, ttl)
  a = scored0 + 2 * m
end
redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. trim_arg)
local n_ckpt = tonumber(ARGV[a]); a = a + 1
for i = 1, n_ckpt do
  redis.call('HSET', KEYS[1], ARGV[a], ARGV[a + 1]); a = a + 2
end
local n_counters = tonumber(ARGV[a]); a = a + 1
for i = 1, n_counters do
  redis.call('HINCRBY', KEYS[3], ARGV[a], ARGV[a + 1]); a = a + 2
end
if duplicates > 0 then redis.call('HINCRBY', KEYS[3], 'duplicates', duplicates) end
if beyond > 0 then redis.call('HINCRBY', KEYS[3], 'beyond_online_horizon', beyond) end
local candidate = ARGV[a]
if candidate ~= '' then
  local current = redis.call('GET', KEYS[2])
  if (not current) or tonumber(candidate) > tonumber(current) then redis.call('SET', KEYS[2], candidate) end
end
return {n - duplicates - beyond, duplicates}
"""

RECORD_LAYOUT = r"""
-- KEYS: the generation's layout hash. ARGV: [entity, layout JSON] * n: the writer's definitions.
-- Records them only when the generation has no layout yet (its first writer); returns what it holds.
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return redis.call('HGETALL', KEYS[1])
"""

READ_FEATURES = r"""
-- KEYS: the live-generation pointer, or none to read ARGV[1]'s generation as it is
-- ARGV: generation (used when there is no pointer or it is unset), entity, n_ids, ids...,
--       as_of_ms ('' = the clock), retention_ms, default layout (JSON, used when the generation has
--       none recorded), n_features, [aggregation, window_ms, field ('' = none)] * n,
--       optionally a pending event: event id, event time, the id it belongs to (of this entity),
--       n_fields, [field name, value] * n (its fields as text, by name)
-- Returns {status, as_of, clock ('' = none), generation, then per entity id, per feature: value
--          ('' = null), latest contributing event time ('' = none)}; status 'ok', 'no_clock' or
--          'too_old'; or {'not_held', feature index (from 1), 'field', 'window' or 'entity', generation}.
-- Key names are built here from the generation the pointer names at this instant, so one request reads
-- one generation whole even while another is being promoted; the field positions come from that
-- generation's recorded layout, so code with more features reads older generations correctly.
-- A pending event counts for its id as if applied (its member built in the recorded layout, placed
-- among equal times by member like a sorted set does), unless its id was applied already (meta:seen,
-- or a member of the key with the same time and id): scoring before or after the apply agrees.
local gen = ARGV[1]
if #KEYS > 0 then
  local live = redis.call('GET', KEYS[1])
  if live then gen = live end
end
local prefix = 'hw:' .. gen
local entity, n_ids = ARGV[2], tonumber(ARGV[3])
local a0 = 3 + n_ids  -- ARGV[a0 + i] is what ARGV[i] was before the ids
local layout_key = prefix .. ':meta:layout'
local recorded = redis.call('HGET', layout_key, entity)
if not recorded then
  if redis.call('EXISTS', layout_key) == 1 then return {'not_held', '1', 'entity', gen} end
  recorded = ARGV[a0 + 3]  -- nothing written yet: the caller's definitions
end
local layout = cjson.decode(recorded)
local position = {}
for i, name in ipairs(layout.fields) do position[name] = i end
local n_fields = #layout.fields
local nf = tonumber(ARGV[a0 + 4])
local specs, max_w, needs_fields = {}, 0, false
local numeric, textual = {}, {}  -- which fields are read as numbers, which as text
for i = 1, nf do
  local base = a0 + 5 + 3 * (i - 1)
  local agg, w, name = ARGV[base], tonumber(ARGV[base + 1]), ARGV[base + 2]
  local fi = 0
  if name ~= '' then
    fi = position[name]
    if not fi then return {'not_held', tostring(i), 'field', gen} end
  end
  if w > layout.max_window_ms then return {'not_held', tostring(i), 'window', gen} end
  specs[i] = {agg, w, fi}
  if w > max_w then max_w = w end
  if fi > 0 then
    needs_fields = true
    if agg == 'distinct_count' then textual[fi] = true else numeric[fi] = true end
  end
end
local clock = redis.call('GET', prefix .. ':meta:clock')
local as_of
if ARGV[a0 + 1] == '' then
  if not clock then return {'no_clock', '', '', gen} end
  as_of = tonumber(clock)
else
  as_of = tonumber(ARGV[a0 + 1])
  if clock and as_of < tonumber(clock) - tonumber(ARGV[a0 + 2]) then
    return {'too_old', ARGV[a0 + 1], clock, gen}
  end
end
-- One pattern captures every field of a member (event id first) in one call per event.
local pattern = '^[^\31]*' .. string.rep('\31([^\31]*)', n_fields) .. '$'
local function num(x) return string.format('%.17g', x) end
local out = {'ok', string.format('%d', as_of), clock or '', gen}
local pb = a0 + 5 + 3 * nf  -- where the pending event's arguments start, if any
local p_id, p_time, p_of, p_member = ARGV[pb], nil, nil, nil
if p_id and p_id ~= '' then
  p_time = tonumber(ARGV[pb + 1])
  local in_window = p_time > as_of - max_w and p_time <= as_of
  if in_window and not redis.call('ZSCORE', prefix .. ':meta:seen', p_id) then
    local given = {}
    for i = 1, tonumber(ARGV[pb + 3]) do given[ARGV[pb + 2 + 2 * i]] = ARGV[pb + 3 + 2 * i] end
    local parts = {p_id}
    for fi, name in ipairs(layout.fields) do
      if not given[name] then return redis.error_reply('pending event lacks field ' .. name) end
      parts[fi + 1] = given[name]
    end
    p_of, p_member = ARGV[pb + 2], table.concat(parts, '\31')
  end
end
-- Whether member a sorts before member b in a sorted set (bytewise, like memcmp; Lua's < may use the
-- locale's collation).
local function bytes_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local events = prefix .. ':ev:{' .. entity .. ':'
for k = 1, n_ids do
  local key = events .. ARGV[3 + k] .. '}'
  local rows = redis.call('ZRANGEBYSCORE', key, '(' .. num(as_of - max_w), num(as_of), 'WITHSCORES')
  if p_member and ARGV[3 + k] == p_of then
    -- The rows after the pending event are a suffix: (later time) or (same time, greater member).
    local at, p_head = #rows / 2 + 1, p_id .. '\31'
    for j = #rows / 2, 1, -1 do
      local t = tonumber(rows[2 * j])
      if t < p_time then break end
      local m = rows[2 * j - 1]
      if t == p_time and (m == p_id or string.sub(m, 1, #p_head) == p_head) then at = nil; break end
      if t > p_time or bytes_before(p_member, m) then at = j end
    end
    if at then
      table.insert(rows, 2 * at - 1, p_member)
      table.insert(rows, 2 * at, ARGV[pb + 1])
    end
  end
  local n = #rows / 2
  local times, columns = {}, {}
  for fi = 1, n_fields do columns[fi] = {} end
  for j = 1, n do
    times[j] = tonumber(rows[2 * j])
    if needs_fields then
      local fields = {string.match(rows[2 * j - 1], pattern)}
      for fi = 1, n_fields do
        if numeric[fi] then columns[fi][j] = tonumber(fields[fi])
        elseif textual[fi] then columns[fi][j] = fields[fi] end
      end
    end
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
      local column, seen, d = columns[fi], {}, 0
      for j = first, n do
        local v = column[j]
        if not seen[v] then seen[v] = true; d = d + 1 end
      end
      value = string.format('%d', d)
    else
      local column, sum, mx = columns[fi], 0, nil
      for j = first, n do
        local v = column[j]
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
