"""Lua scripts the Redis online store runs server-side.

Every script is atomic in Redis. ``RECORD_LAYOUT`` fixes a generation's layout at its first write.
``APPLY_BATCH`` applies a batch of events, the partitions' checkpoints, the counters and the event-time
clock in one step, so a crash leaves either all of a batch or none of it (``EDIT_SORTED_SETS`` is the
bulk writes' events and tiles, :mod:`sinks.redis_bulk`). ``READ_FEATURES`` reads the
clock, checks ``as_of`` against the retention and aggregates each entity's events over the requested
windows, so one round trip answers a request and only the answers cross the network.

An entity's events live in one sorted set: score = event_time, member = the event id followed by the
entity's feature fields, joined by the unit separator (0x1f), fields in the order of the generation's
recorded layout (``hw:{gen}:meta:layout``, see :class:`streams.features.EntityLayout`). Counts and
event times, whole numbers, go back to Python as Redis integers; other numbers as strings (``%.17g``),
so no precision is lost to Redis' integer conversion of Lua numbers.

Ids and field values never contain control characters (``schemas.validate`` refuses them), so the
separator 0x1f cannot occur inside them. Lua's ``unpack`` is limited to a few thousand values,
so variadic calls go in chunks of ``CHUNK``.
"""

TILE_MIN_EVENTS = 8
"""A tile is kept for a span of at least this many events, and read for a window that averages as many
per tile: below that, reading the events raw is cheaper than a tile's bookkeeping."""
# What both scripts share: the tile threshold, and how a member's field fi (1 = the first after the id)
# is found.
_PRELUDE = (
    f"local TILE_MIN_EVENTS = {TILE_MIN_EVENTS}\n"
    + r"""
local function field_pattern(fi) return '^[^\31]*' .. string.rep('\31[^\31]*', fi - 1) .. '\31([^\31]*)' end
"""
)

APPLY_BATCH = (
    _PRELUDE
    + r"""
-- KEYS: checkpoints hash, clock string, counters hash, seen zset, pending-history hash, apply_seq
--       string, then one events zset per entity id, then the tiles zsets of tiled entities' ids
-- ARGV: ttl_ms, trim_before, n_events, the n event ids, their n event times,
--       n_keys, per key: n_entries, then [score (event time), member] * n_entries, then tile_ms (0:
--       the entity keeps no tiles) and, when not 0, n_tiled, [field position, KEYS index of the field's
--       tiles] * n_tiled;
--       n_checkpoints, [field, value] * n, n_counters, [name, increment] * n, clock_candidate,
--       the batch's history spans ('' = no history: no apply sequence number either), and optionally
--       a bulk write's seen-merge record (stored at the seen key's name + '_merge', see sinks.redis_bulk)
-- Returns {applied, duplicates, apply_seq (0 = none)}
-- A large batch is applied as parts of entries alone (n_events 0, no checkpoints, counters, clock or
-- spans), then one script of its ids and the rest with no keys (see RedisOnlineStore.write_prepared).
-- A member is its event's id, then 0x1f and the entity's fields. Every value is its own argument, so
-- nothing is parsed here but the members of tiles the batch touched, and a key's entries go to ZADD
-- straight from ARGV when no event of the batch is skipped (the usual case).
local CHUNK = 1000
local match, pack = string.match, struct.pack
local function int(x) return string.format('%d', x) end
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
  local key = KEYS[6 + k]
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
  local tile_ms = tonumber(ARGV[a]); a = a + 1
  if tile_ms > 0 then
    -- Every tile this batch touched is rebuilt from the events it now spans, so a tile always holds
    -- exactly its span's values in the set's order, whatever order events arrived in.
    local nt, tiles = tonumber(ARGV[a]), {}
    for j = 1, nt do
      tiles[j] = {field_pattern(tonumber(ARGV[a + 2 * j - 1])), KEYS[tonumber(ARGV[a + 2 * j])]}
    end
    a = a + 1 + 2 * nt
    local keep_from = math.floor(trim / tile_ms)  -- tiles before this one lie wholly below the trim
    local touched = {}
    for j = 0, m - 1 do
      local t = math.floor(tonumber(ARGV[scored0 + 2 * j]) / tile_ms)
      if t >= keep_from and not touched[t] then
        touched[t] = true
        local from, to = int(t * tile_ms), '(' .. int((t + 1) * tile_ms)
        -- A span of few events is cheaper to read raw, and a read does so for a span without a tile
        -- (a span only grows, but by trimming, so no stale tile of more events can be left there).
        if redis.call('ZCOUNT', key, from, to) >= TILE_MIN_EVENTS then
          local members = redis.call('ZRANGEBYSCORE', key, from, to)
          local t_arg = int(t)
          for _, tile in ipairs(tiles) do
            local pattern, parts = tile[1], {}
            for i, member in ipairs(members) do parts[i] = pack('<d', tonumber(match(member, pattern))) end
            redis.call('ZREMRANGEBYSCORE', tile[2], t_arg, t_arg)
            redis.call('ZADD', tile[2], t_arg, t_arg .. ':' .. table.concat(parts))
          end
        end
      end
    end
    for _, tile in ipairs(tiles) do
      redis.call('ZREMRANGEBYSCORE', tile[2], '-inf', '(' .. int(keep_from))
      redis.call('PEXPIRE', tile[2], ttl)
    end
  end
end
-- A script of entries alone (a part of a staged batch, no ids) leaves the index as it is: the batch's
-- last script checks its ids against it as it was before the batch.
if n > 0 then redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. trim_arg) end
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
local seq = 0
if ARGV[a + 1] ~= '' then
  seq = redis.call('INCR', KEYS[6])
  redis.call('HSET', KEYS[5], seq, ARGV[a + 1])
end
if ARGV[a + 2] then redis.call('SET', seen .. '_merge', ARGV[a + 2]) end
return {n - duplicates - beyond, duplicates, seq}
"""
)

EDIT_SORTED_SETS = r"""
-- KEYS: sorted sets. ARGV: ttl_ms, then per key: n_cuts, [min, max] * n_cuts, n_entries,
--       [score, member] * n_entries.
-- Per key: each cut's range removed (ZREMRANGEBYSCORE), then the entries added, then the TTL set.
-- Bulk writes (sinks.redis_bulk) send many keys' edits in one call rather than three commands per key,
-- whose replies cost the writer more than the edits cost Redis; entries go to ZADD straight from ARGV.
local CHUNK = 1000
local ttl, a = ARGV[1], 2
for k = 1, #KEYS do
  local key = KEYS[k]
  local cuts = tonumber(ARGV[a]); a = a + 1
  for c = 1, cuts do
    redis.call('ZREMRANGEBYSCORE', key, ARGV[a], ARGV[a + 1]); a = a + 2
  end
  local m = tonumber(ARGV[a]); a = a + 1
  for c = 0, m - 1, CHUNK do
    local last = math.min(m - 1, c + CHUNK - 1)
    redis.call('ZADD', key, unpack(ARGV, a + 2 * c, a + 2 * last + 1))
  end
  a = a + 2 * m
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""

RECORD_LAYOUT = r"""
-- KEYS: the generation's layout hash. ARGV: [entity, layout JSON] * n: the writer's definitions.
-- Records them only when the generation has no layout yet (its first writer); returns what it holds.
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return redis.call('HGETALL', KEYS[1])
"""

READ_FEATURES = (
    _PRELUDE
    + r"""
-- KEYS: the live-generation pointer, or none to read ARGV[1]'s generation as it is
-- ARGV: generation (used when there is no pointer or it is unset), entity, n_ids, ids...,
--       as_of_ms ('' = the clock), retention_ms, default layout (JSON, used when the generation has
--       none recorded), n_features, [aggregation, window_ms, field ('' = none)] * n,
--       optionally a pending event: event id, event time, the id it belongs to (of this entity),
--       n_fields, [field name, value] * n (its fields as text, by name)
-- Returns {status, as_of, clock ('' = none), generation, then per entity id, per feature: value
--          ('' = null; counts as integers, other values as text), latest contributing event time
--          (an integer; '' = none)}; status 'ok', 'no_clock' or
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
local nf = tonumber(ARGV[a0 + 4])
local specs, max_w = {}, 0
local numeric = {}  -- fields read as numbers (for sums, max, avg); the others stay text
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
    if agg ~= 'distinct_count' then numeric[fi] = true end
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
-- Counts come from ZCOUNT and the latest event from one ZREVRANGEBYSCORE, so they cost O(log n) per id;
-- only features that fold a field fetch members (without scores: a window is a suffix of the widest
-- one, its length the window's count), and each field is parsed once, over the widest window that
-- folds it. A busy entity's request costs its members once, not once per feature.
local function num(x) return string.format('%.17g', x) end
local as_of_arg = num(as_of)
local widths, lo_arg, widest_of = {}, {}, {}
for i = 1, nf do
  local w, fi = specs[i][2], specs[i][3]
  if not lo_arg[w] then widths[#widths + 1] = w; lo_arg[w] = '(' .. num(as_of - w) end
  if fi > 0 then
    if not widest_of[fi] or w > widest_of[fi] then widest_of[fi] = w end
  end
end
local patterns = {}
for fi in pairs(widest_of) do patterns[fi] = field_pattern(fi) end
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
local match, unpack_d, floor = string.match, struct.unpack, math.floor
local events = prefix .. ':ev:{' .. entity .. ':'
-- Tiles: per tiled field, one zset per id, score = tile index t (covering event times
-- [t * tile_ms, (t + 1) * tile_ms)), member = 't:' then the span's values packed as little-endian
-- doubles, in the events' set order (APPLY_BATCH rebuilds every tile a batch touches).
local tile_ms = tonumber(layout.tile_ms or 0)
local tiled = {}
for _, name in ipairs(layout.tiled_fields or {}) do tiled[position[name]] = true end
local tiles_of = prefix .. ':tl:{' .. entity .. ':'
-- The numbers field fi holds for key's events with time in (lo, hi], in the set's order: whole tiles
-- from their packed values, the edges (and any tile whose length disagrees with its span's count) from
-- the events themselves. The same values in the same order as parsing every event, so the same fold.
local function tiled_values(key, tkey, lo, hi, pattern)
  local out, i = {}, 0
  local function raw(from, to)
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, from, to)) do
      i = i + 1; out[i] = tonumber(match(m, pattern))
    end
  end
  local a, b = floor(lo / tile_ms) + 1, floor((hi + 1) / tile_ms) - 1
  if b < a then raw('(' .. num(lo), num(hi)); return out end
  raw('(' .. num(lo), '(' .. num(a * tile_ms))
  local packed = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', tkey, num(a), num(b))) do
    local c = string.find(m, ':', 1, true)
    packed[tonumber(string.sub(m, 1, c - 1))] = {m, c + 1}
  end
  for t = a, b do
    local from, to = num(t * tile_ms), '(' .. num((t + 1) * tile_ms)
    local n = redis.call('ZCOUNT', key, from, to)
    local tile = packed[t]
    if tile and #tile[1] - tile[2] + 1 == 8 * n then
      local m, pos = tile[1], tile[2]
      local v1, v2, v3, v4, v5, v6, v7, v8
      for _ = 1, floor(n / 8) do  -- eight to a call: a third less time than one by one
        v1, v2, v3, v4, v5, v6, v7, v8, pos = unpack_d('<dddddddd', m, pos)
        out[i + 1], out[i + 2], out[i + 3], out[i + 4] = v1, v2, v3, v4
        out[i + 5], out[i + 6], out[i + 7], out[i + 8] = v5, v6, v7, v8
        i = i + 8
      end
      for _ = 1, n % 8 do i = i + 1; out[i], pos = unpack_d('<d', m, pos) end
    elseif n > 0 then
      raw(from, to)
    end
  end
  raw(num((b + 1) * tile_ms), num(hi))
  return out
end
for k = 1, n_ids do
  local id = ARGV[3 + k]
  local key = events .. id .. '}'
  local counts = {}
  for _, w in ipairs(widths) do counts[w] = redis.call('ZCOUNT', key, lo_arg[w], as_of_arg) end
  local latest = nil
  if nf > 0 and counts[max_w] > 0 then
    local newest = redis.call('ZREVRANGEBYSCORE', key, as_of_arg, lo_arg[max_w], 'WITHSCORES', 'LIMIT', 0, 1)
    latest = tonumber(newest[2])
  end
  -- Tiles pay when a window holds many more events than tiles (spans with fewer than TILE_MIN_EVENTS
-- have none); both ways give the same values.
  local from_tiles, rows_w = {}, 0
  for fi, w in pairs(widest_of) do
    if tiled[fi] and numeric[fi] and counts[w] >= TILE_MIN_EVENTS * w / tile_ms then from_tiles[fi] = true
    elseif w > rows_w then rows_w = w end
  end
  local rows = {}
  if rows_w > 0 and counts[rows_w] > 0 then
    rows = redis.call('ZRANGEBYSCORE', key, lo_arg[rows_w], as_of_arg)
  end
  local p_live, before, time_arg = false, 0, nil
  if p_member and id == p_of then
    -- Applied already if a member with its time carries its id; else it goes after the members of its
    -- time that sort before it, as a sorted set would place it.
    local p_head, applied = p_id .. '\31', false
    time_arg = num(p_time)
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, time_arg, time_arg)) do
      if m == p_id or string.sub(m, 1, #p_head) == p_head then applied = true; break end
      if bytes_before(m, p_member) then before = before + 1 end
    end
    if not applied then
      p_live = true
      for _, w in ipairs(widths) do if p_time > as_of - w then counts[w] = counts[w] + 1 end end
      if not latest or p_time > latest then latest = p_time end
    end
  end
  -- Where the pending event goes among the (lo, as_of] members of width w (1 = first), or nil.
  local function pending_at(w)
    if not p_live or p_time <= as_of - w then return nil end
    return redis.call('ZCOUNT', key, lo_arg[w], '(' .. time_arg) + before + 1
  end
  local at = rows_w > 0 and pending_at(rows_w)
  if at then table.insert(rows, at, p_member) end
  -- Each folded field's column over its widest window, dense: a narrower window is a suffix of it.
  local n = #rows
  local columns = {}
  for fi, w in pairs(widest_of) do
    local column, pattern = {}, patterns[fi]
    if from_tiles[fi] then
      column = tiled_values(key, tiles_of .. id .. '}:' .. layout.fields[fi], as_of - w, as_of, pattern)
      local p_at = pending_at(w)
      if p_at then table.insert(column, p_at, tonumber(match(p_member, pattern))) end
    elseif numeric[fi] then
      for j = n - counts[w] + 1, n do column[#column + 1] = tonumber(match(rows[j], pattern)) end
    else
      for j = n - counts[w] + 1, n do column[#column + 1] = match(rows[j], pattern) end
    end
    columns[fi] = column
  end
  for i = 1, nf do
    local agg, w, fi = specs[i][1], specs[i][2], specs[i][3]
    local count = counts[w]
    local value = ''
    if agg == 'count' then
      value = count
    elseif agg == 'seconds_since_last' then
      if count > 0 then value = num((as_of - latest) / 1000) end
    elseif agg == 'distinct_count' then
      local column, seen, d = columns[fi], {}, 0
      for j = #column - count + 1, #column do
        local v = column[j]
        if not seen[v] then seen[v] = true; d = d + 1 end
      end
      value = d
    else
      local column, sum, mx = columns[fi], 0, nil
      for j = #column - count + 1, #column do
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
    out[#out + 1] = count > 0 and latest or ''
  end
end
return out
"""
)
