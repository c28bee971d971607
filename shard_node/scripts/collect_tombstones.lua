-- Tombstone collection (formats and the rule: _keys.py, Tombstones): one step of a walk, shared by every
-- router, over the hashes of one board on this node that can hold tombstones: the index hashes of the
-- slots the node owns, then its version registers. A tombstone '~ver|ms' older than the age limit is
-- deleted, and from an index hash its version raises the slot's floor first, so the member, should it
-- come back, still gets versions above it (first_version). A '~ver' of older releases (its
-- age unknown) is stamped with the time now, so that it goes once it is that old counted from now.
-- Entries, registered versions and floors are left as they are.
-- KEYS[1]: the board's collection position on this node ('position hscan-cursor'; absent: the start).
-- ARGV: index key stem 'rs:i:{b}/', the slots this node owns (space-separated), index hashes per slot,
--       register key stem 'rs:v:{b}/', register hashes, age limit in ms, budget: hash fields to look at,
--       each HSCAN page counting for one more (most of a board's hashes may be empty or absent on a node);
--       the step stops once past it, or after one whole round of the walk.
-- Returns {deleted, stamped, fields looked at, 1 if the walk passed its start else 0}.
local istem, vstem = ARGV[1], ARGV[4]
local slots = {}
for slot in string.gmatch(ARGV[2], '%d+') do table.insert(slots, slot) end
local per_slot, registers = tonumber(ARGV[3]), tonumber(ARGV[5])
local max_age, budget = tonumber(ARGV[6]), tonumber(ARGV[7])
local hashes = #slots * per_slot + registers
if hashes == 0 then return {0, 0, 0, 1} end
local now = node_ms()

local function hash_at(p)
  if p < #slots * per_slot then
    return istem .. slots[math.floor(p / per_slot) + 1] .. ':' .. string.format('%d', p % per_slot)
  end
  return vstem .. string.format('%d', p - #slots * per_slot)
end

-- What becomes of one value: deleted (its version returned), stamped, or left.
local function collect(key, field, value)
  if field == '' or string.byte(value, 1) ~= 126 then return nil, 0 end  -- '~': only tombstones
  local ver, ms = string.match(value, '^~(%d+)|(%d+)$')
  if ms then
    if now - tonumber(ms) < max_age then return nil, 0 end
    redis.call('HDEL', key, field)
    return tonumber(ver), 0
  end
  ver = string.match(value, '^~(%d+)$')
  if not ver then return nil, 0 end
  redis.call('HSET', key, field, '~' .. ver .. string.format('|%d', now))
  return nil, 1
end

local saved = redis.call('GET', KEYS[1])
local pos, cursor = 0, '0'
if saved then
  local p, c = string.match(saved, '^(%d+) (%d+)$')
  if p and tonumber(p) < hashes then pos, cursor = tonumber(p), c end
end
local deleted, stamped, looked, spent, visited, wrapped = 0, 0, 0, 0, 0, 0
while spent < budget and visited < hashes do
  local key = hash_at(pos)
  local page = redis.call('HSCAN', key, cursor, 'COUNT', math.max(10, budget - spent))
  cursor = page[1]
  local fields = page[2]
  local index, floor, raised = pos < #slots * per_slot, nil, false
  for j = 1, #fields, 2 do
    local ver, s = collect(key, fields[j], fields[j + 1])
    stamped = stamped + s
    if ver then
      deleted = deleted + 1
      if index then
        floor = floor or version_of(redis.call('HGET', floor_key(key), ''))
        if ver > floor then floor, raised = ver, true end
      end
    end
  end
  if raised then redis.call('HSET', floor_key(key), '', string.format('~%d', floor)) end
  looked = looked + #fields / 2
  spent = spent + 1 + #fields / 2
  if cursor == '0' then
    visited = visited + 1
    pos = pos + 1
    if pos == hashes then pos, wrapped = 0, 1 end
  end
end
redis.call('SET', KEYS[1], string.format('%d ', pos) .. cursor)
return {deleted, stamped, looked, wrapped}
