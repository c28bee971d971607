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
  local raw = string.format('%d|%d|', e.score, e.ver) .. e.home .. '|' .. e.from .. '|' .. e.to
  if e.rgen == nil then return raw end
  return raw .. '|' .. e.rgen
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

-- The index scripts' map argument 'b1 b2 .. bn|id1 id2 .. id(n+1)' (cut points and shard ids, ascending)
-- as a function from a score to the id of the shard it falls in.
local function shard_finder(map)
  local bounds, ids = {}, {}
  local cuts, names = string.match(map, '^([^|]*)|(.*)$')
  for b in string.gmatch(cuts, '%S+') do table.insert(bounds, tonumber(b)) end
  for id in string.gmatch(names, '%S+') do table.insert(ids, id) end
  local nb = #bounds
  return function(score)
    local lo, hi = 1, nb + 1
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if score < bounds[mid] then hi = mid else lo = mid + 1 end
    end
    return ids[lo]
  end
end
