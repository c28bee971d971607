-- Shared by every rankshard script (the loader prepends this file). Formats: see shard_node/_keys.py.
local MAX_SCORE = 9007199254740991

-- An index entry "score|ver|home|from|to|rgen"; nil for absent or removed ("~ver|ms"). rgen names the
-- generation holding the member's request-id records ('' none; see index_apply); entries written before
-- it existed have five fields: rgen nil, unknown (index_apply then looks in every generation).
local function parse_entry(raw)
  if not raw or string.sub(raw, 1, 1) == '~' then return nil end
  local s, v, h, f, t, g = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)(.*)$')
  local rgen = nil
  if g ~= '' then rgen = string.sub(g, 2) end
  return {score = tonumber(s), ver = tonumber(v), home = h, from = f, to = t, rgen = rgen}
end

-- Strings are concatenated, never formatted with '%s' (which stops at a NUL in Lua 5.1).
local function format_entry(e)
  local head = string.format('%d|%d|', e.score, e.ver)
  if e.rgen == nil then return head .. e.home .. '|' .. e.from .. '|' .. e.to end
  return head .. e.home .. '|' .. e.from .. '|' .. e.to .. '|' .. e.rgen  -- one concatenation, not two
end

-- `cmd key args...` for a flat list of arguments in as few calls as Lua allows (unpack takes a few
-- thousand values at most); one variadic ZADD or ZREM costs far less than one call per member.
local function call_bulk(cmd, key, args)
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

-- The version of a versions-hash value ("ver") or of a tombstone ("~ver|ms", or "~ver" as older
-- releases wrote it), 0 when there is none.
local function version_of(raw)
  if not raw then return 0 end
  return tonumber(string.match(raw, '^~?(%d+)'))
end

-- The node's clock, in ms.
local function node_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A tombstone refusing writes up to version `ver`, written at `ms` (collected once old: _keys.py).
local function tombstone(ver, ms)
  return string.format('~%d|%d', ver, ms)
end

-- Where the floor of the index slot of hash `index_key` ('rs:i:{b}/{slot}:{bucket}') is kept: field ''
-- (no user id is empty) of the slot's first hash (_keys.py).
local function floor_key(index_key)
  return string.match(index_key, '^(.*):%d+$') .. ':0'
end

-- The version a member gets when it comes to the board: above its own tombstone's, or when it has none
-- (never seen, or its tombstone collected) above its index slot's floor: the highest version of any
-- member whose tombstone was collected from the slot.
local function first_version(index_key, raw)
  if raw then return version_of(raw) + 1 end
  return version_of(redis.call('HGET', floor_key(index_key), '')) + 1
end

-- The index scripts' map argument 'c1 c2 .. cn' (the refined cut points, ascending: those of the map and of the
-- splits under way; integers, one space apart) as a function from a score to the number of the cell of the score
-- line it falls in. Where a member lives is derived from its score (docs/architecture.md): it crosses when its cell
-- changes.
local function cell_finder(cuts)
  -- Read by cjson's C parser as a JSON array: every index call reads every cut, and at 256 shards a loop over
  -- string.gmatch took 45 µs a call, cjson 18 (Valkey 8.1). Integers up to 2^53 read exactly either way.
  local bounds = cjson.decode('[' .. (string.gsub(cuts, ' ', ',')) .. ']')
  local nb = #bounds
  return function(score)
    local lo, hi = 1, nb + 1
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if score < bounds[mid] then hi = mid else lo = mid + 1 end
    end
    return lo
  end
end

-- The score a pending crossing leaves from: '@score' (entries of older releases named a shard id there: nil).
local function source_score(e)
  if string.sub(e.from, 1, 1) == '@' then return tonumber(string.sub(e.from, 2)) end
  return nil
end

-- '@' and the score in decimal, as crossings record where they leave from ('..' would print a big score as 9e15).
local function from_score(score)
  return '@' .. string.format('%d', score)
end

-- The epoch floor of the board of a pending-writes zset 'rs:m:{b}/' (the key beside it, 'rs:e:{b}/'): index
-- scripts refuse a router whose map is older, before writing anything (docs/architecture.md, control plane).
-- Returns the floor when `epoch` is below it, else nil.
local function below_floor(marks_key, epoch)
  local floor = tonumber(redis.call('GET', 'rs:e:' .. string.sub(marks_key, 6)) or '0')
  if tonumber(epoch) < floor then return floor end
  return nil
end

-- A shard descriptor's state (its last field).
local function state_of(d)
  return string.match(d, '|([^|]*)$')
end

-- Where a job keeps what a shard's scripts need while it carves from it (docs/architecture.md, rebalancing): the
-- hash 'rs:c:{b}/{s}' beside descriptor 'rs:d:{b}/{s}' (fields lo, hi: the carved range in stored scores,
-- [lo, hi); deadline: a freeze's end, node ms), the set 'rs:y:..' of members written since the job began.
local function carve_keys(dkey)
  local rest = string.sub(dkey, 6)
  return 'rs:c:' .. rest, 'rs:y:' .. rest
end

-- The write fence of a shard: nil when writes planned with descriptor `expected` may go ahead, else the
-- descriptor the node holds ('' for none). A FROZEN shard whose freeze deadline has passed thaws back to
-- MIGRATING here, so a job that died while it was frozen holds no writer up for long. `held`: the descriptor as
-- the caller read it in this call (false: absent), so that many shards' fences cost one MGET; nil: read here.
local function write_fence(dkey, expected, held)
  local d = held
  if d == nil then d = redis.call('GET', dkey) end
  if d == expected then return nil end
  if d and state_of(d) == 'FROZEN' and string.sub(d, 1, -7) .. 'MIGRATING' == expected then
    local deadline = tonumber(redis.call('HGET', (carve_keys(dkey)), 'deadline') or '0')
    if node_ms() > deadline then
      redis.call('SET', dkey, expected)
      return nil
    end
  end
  return d or ''
end

-- The dirty-set tracking of a MIGRATING shard: a function telling whether a member's stored score `stored`
-- lies in the carved range, and the set to add such members to; nil when the shard is not carved from.
local function carving(dkey, expected)
  if string.sub(expected, -10) ~= '|MIGRATING' then return nil end  -- state_of without a match: once per shard
  local ckey, dirty = carve_keys(dkey)
  local r = redis.call('HMGET', ckey, 'lo', 'hi')
  local lo, hi = tonumber(r[1]), tonumber(r[2])
  return function(stored) return stored and stored >= lo and stored < hi end, dirty
end

-- The board's shard sizes on this node, 'rs:n:{b}/' (docs/architecture.md, key formats), and the field of the shard
-- whose zset is `zkey` ('rs:z:{b}/{s}'; also its descriptor key 'rs:d:{b}/{s}'). Field s: the members of zset s
-- inside the stored range of descriptor s, field '>s' that range 'lo hi' (both absent until a full count sets them);
-- field '': a token renewed with every descriptor change; field '#': a count of size changes. The zset beside it,
-- 'rs:o:{b}/', holds each shard's number in that count at its last change: a read that saw every size at change
-- number c under the token asks only for the shards changed since.
-- Scripts over many shards are sent the sizes keys and each shard's field instead (a match per shard adds up).
local function sizes_of(zkey)
  local board, s = string.match(zkey, '^rs:[zd]:(.*/)([^/]*)$')
  return 'rs:n:' .. board, s, 'rs:o:' .. board
end

-- Shards `changed` kept with their new fields `values` (field, value...: each shard's size, and its range when that
-- is kept too) in sizes hash `key`: the change count goes up by one per shard, in order, and changes zset `okey`
-- gets each shard's number. One write of each key however many shards changed.
local function sizes_kept(key, okey, changed, values)
  call_bulk('HSET', key, values)  -- 4000 values at a time: a shard's two or four never split
  local last = redis.call('HINCRBY', key, '#', #changed)
  local numbered = {}
  for j = 1, #changed do
    numbered[2 * j - 1], numbered[2 * j] = last - #changed + j, changed[j]
  end
  call_bulk('ZADD', okey, numbered)
end

local function size_kept(key, s, okey, n, range)
  sizes_kept(key, okey, {s}, range and {s, n, '>' .. s, range} or {s, n})
end

-- Sizes `counts[j]` of shards `fields[j]` inside their ranges `ranges[j]` ('lo hi', stored scores, their
-- descriptors': the caller checked them), kept in sizes hash `key` with changes zset `okey`, with one read of those
-- kept. Most writes move a member within its shard: a size and range already kept as they are cost that read, not
-- a change (readers then have nothing new to fetch). The sizes that changed are kept together (`sizes_kept`), since
-- a batch of crossings changes two shards' sizes per member.
local function keep_sizes(key, okey, fields, counts, ranges)
  local asked = {}
  for j = 1, #fields do
    asked[2 * j - 1] = fields[j]
    asked[2 * j] = '>' .. fields[j]
  end
  local changed, sizes = {}, {}
  for i = 1, #asked, 4000 do  -- an even step: a shard's two fields stay in one read
    local kept = redis.call('HMGET', key, unpack(asked, i, math.min(i + 3999, #asked)))
    for j = 1, #kept, 2 do
      local at = (i + j) / 2
      if tonumber(kept[j]) ~= counts[at] or kept[j + 1] ~= ranges[at] then
        local f, w = fields[at], #sizes
        changed[#changed + 1] = f
        sizes[w + 1], sizes[w + 2], sizes[w + 3], sizes[w + 4] = f, counts[at], '>' .. f, ranges[at]
      end
    end
  end
  if #changed > 0 then sizes_kept(key, okey, changed, sizes) end
end

-- The size of zset `zkey` inside its range [lo, hi) (as `keep_sizes` takes it), counted and kept.
local function keep_size(zkey, lo, hi)
  local key, s, okey = sizes_of(zkey)
  local n = redis.call('ZCOUNT', zkey, lo, '(' .. hi)
  keep_sizes(key, okey, {s}, {n}, {lo .. ' ' .. hi})
  return n
end

-- After a change to zset `zkey` inside its range: its size counted again (when a size is kept for it).
local function recount(zkey)
  local key, s, okey = sizes_of(zkey)
  local kept = redis.call('HMGET', key, s, '>' .. s)
  if not kept[2] then return end
  local lo, hi = string.match(kept[2], '^(%S+) (%S+)$')
  local n = redis.call('ZCOUNT', zkey, lo, '(' .. hi)
  if tonumber(kept[1]) ~= n then size_kept(key, s, okey, n) end
end

-- The writes of shard_apply and shard_write into one shard whose write fence let descriptor `expected` through:
-- ARGV[first..last] as (user, stored score, ver, the user's versions hash)... Each is written only if its ver (+
-- `slack`: 1 to rewrite at the registered version, else 0) is newer than the user's registered version; a MIGRATING
-- shard notes every member written whose old or new stored score lies in the carved range, for the job's catch-up.
-- The caller keeps the shard's size (`keep_size`, `keep_sizes`).
local function apply_writes(zkey, dkey, expected, slack, first, last)
  local in_carve, dirty = carving(dkey, expected)
  local adds, noted = {}, {}
  for i = first, last, 4 do
    local user, stored, ver, vkey = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    if tonumber(ver) + slack > version_of(redis.call('HGET', vkey, user)) then
      redis.call('HSET', vkey, user, ver)
      -- One user appears once per shard and call (the caller sends each member's final state), so one ZADD at
      -- the end writes what per-member ZADDs would.
      adds[#adds + 1] = stored
      adds[#adds + 1] = user
      if in_carve and (in_carve(tonumber(stored)) or in_carve(tonumber(redis.call('ZSCORE', zkey, user)))) then
        noted[#noted + 1] = user
      end
    end
  end
  call_bulk('ZADD', zkey, adds)
  if #noted > 0 then call_bulk('SADD', dirty, noted) end
end

-- The removals of shard_remove and shard_drop from one shard whose write fence let descriptor `expected` through:
-- for i = first, last, step, member ARGV[i] at version ARGV[i + 1], its versions hash `vkey_of(i)`. A member goes
-- only if its registered version is not newer, leaving a tombstone '~ver|ms' so a late older write cannot bring it
-- back, and only if the zset holds it inside the shard's range [low, high) (one held outside is a job's copy or a
-- finished job's leftover, and stays). A MIGRATING shard notes the members removed from the carved range. Returns
-- how many members left the zset; the caller keeps the shard's size.
local function remove_members(zkey, dkey, expected, low, high, first, last, step, vkey_of)
  local in_carve, dirty = carving(dkey, expected)
  local removed, noted = 0, {}
  local now = node_ms()
  for i = first, last, step do
    local user, ver, vkey = ARGV[i], tonumber(ARGV[i + 1]), vkey_of(i)
    local here = tonumber(redis.call('ZSCORE', zkey, user))
    if (not here or (here >= low and here < high)) and version_of(redis.call('HGET', vkey, user)) <= ver then
      if in_carve and in_carve(here) then noted[#noted + 1] = user end
      if here then removed = removed + redis.call('ZREM', zkey, user) end
      redis.call('HSET', vkey, user, tombstone(ver, now))
    end
  end
  if #noted > 0 then call_bulk('SADD', dirty, noted) end
  return removed
end

-- `change_shards`' change for shard_write's blocks, items (user, stored score, ver, the user's versions hash):
-- `apply_writes` with `slack`.
local function writes_change(slack)
  return function(zkey, dkey, expected, _lo, _hi, i, j)
    apply_writes(zkey, dkey, expected, slack, i, j)
  end
end

local function drop_vkey(at) return ARGV[at + 2] end

-- `change_shards`' change for shard_drop's blocks, items (user, ver, the user's versions hash): `remove_members`,
-- answered with how many members left the zset.
local function drops_change(zkey, dkey, expected, lo, hi, i, j)
  return remove_members(zkey, dkey, expected, tonumber(lo), tonumber(hi), i, j, 3, drop_vkey)
end

-- The per-shard blocks of shard_write and shard_drop, ARGV[first..last], each changed by `change`: a block is a
-- shard id, its expected descriptor, its range in stored scores [lo, hi), a count k, then k items of `width` values.
-- The descriptors are read in one MGET (per 4,000 shards) and the kept sizes in one HMGET (`keep_sizes`, in sizes
-- hash `key` with changes zset `okey`), so a call costs a node two reads however many shards it touches. A shard
-- whose fence refuses is left alone and answered {'stale', actual descriptor}; the others are changed all the same:
-- `change(zkey, dkey, expected, lo, hi, i, j)` with its items at ARGV[i..j] and its zset under stem `zstem`, answered
-- {'ok', size inside the range} and what `change` returned, if anything. Returns the answers, in the order sent.
local function change_shards(key, okey, zstem, dstem, first, last, width, change)
  local starts, dkeys = {}, {}
  local i = first
  while i <= last do
    starts[#starts + 1] = i
    dkeys[#dkeys + 1] = dstem .. ARGV[i]
    i = i + 5 + width * tonumber(ARGV[i + 4])
  end
  local held = {}
  for j = 1, #dkeys, 4000 do
    local got = redis.call('MGET', unpack(dkeys, j, math.min(j + 3999, #dkeys)))
    for k = 1, #got do held[j + k - 1] = got[k] end
  end
  local out, fields, counts, ranges = {}, {}, {}, {}
  for j = 1, #starts do
    local at = starts[j]
    local s, expected, lo, hi = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
    local actual = write_fence(dkeys[j], expected, held[j])
    if actual then
      out[j] = {'stale', actual}
    else
      local zkey = zstem .. s
      local extra = change(zkey, dkeys[j], expected, lo, hi, at + 5, at + 4 + width * tonumber(ARGV[at + 4]))
      local size = redis.call('ZCOUNT', zkey, lo, '(' .. hi)
      out[j] = {'ok', size, extra}  -- a nil `extra` ends the list at the size
      fields[#fields + 1], counts[#counts + 1], ranges[#ranges + 1] = s, size, lo .. ' ' .. hi
    end
  end
  if #fields > 0 then keep_sizes(key, okey, fields, counts, ranges) end
  return out
end

-- A new token of sizes hash `key`, returned: a count of renewals and the node's time, so a node that lost its data
-- never hands out a token it handed out before.
local function new_sizes_token(key)
  local t = redis.call('TIME')
  local old = redis.call('HGET', key, '')
  local n = old and tonumber(string.match(old, '^(%d+):')) or 0
  local token = string.format('%d:%s.%s', n + 1, t[1], t[2])
  redis.call('HSET', key, '', token)
  return token
end

-- After a change to the descriptor of zset `zkey`: its size dropped (the next full count sets it under the new
-- range) and a new token, so no read trusts sizes checked against the old descriptor.
local function sizes_changed(zkey)
  local key, s, okey = sizes_of(zkey)
  redis.call('HDEL', key, s, '>' .. s)
  redis.call('ZREM', okey, s)
  new_sizes_token(key)
end

-- A read query inside zset `zkey`, clipped to its range [lo, hi) (stored scores): kind 'b', the members strictly
-- better than stored score `arg`; else the 0-based position of member `arg` in the range (-1 if it is not there).
local function count_query(kind, zkey, lo, hi, arg)
  if kind == 'b' then return redis.call('ZCOUNT', zkey, lo, '(' .. arg) end
  local s = tonumber(redis.call('ZSCORE', zkey, arg))
  if s and s >= tonumber(lo) and s < tonumber(hi) then
    return redis.call('ZRANK', zkey, arg) - redis.call('ZCOUNT', zkey, '-inf', '(' .. lo)
  end
  return -1
end
