-- docs/architecture.md write path step 4 (source side) and RemoveMember: drop members whose registered version is
-- not newer than the given one, leaving a tombstone '~ver|ms' so a late older write cannot bring them back.
-- KEYS: zset, descriptor, then the versions hash of each user. ARGV: expected descriptor, the shard's range in
-- stored scores [lo, hi), then (user, ver)... A MIGRATING shard notes the members removed from the carved range.
-- Only a member inside the range is the shard's: one the key holds outside it is a job's copy (a merge target
-- holds its neighbour's members while they are carved into it) or a finished job's leftover, and stays.
-- Returns {'stale', actual descriptor} or {'ok', size after (inside the range, kept in the board's sizes on this
-- node), removed count}.
local actual = write_fence(KEYS[2], ARGV[1])
if actual then return {'stale', actual} end
local lo, hi = ARGV[2], ARGV[3]
local low, high = tonumber(lo), tonumber(hi)
local in_carve, dirty = carving(KEYS[2], ARGV[1])
local removed, noted = 0, {}
local now = node_ms()
for i = 4, #ARGV, 2 do
  local user, ver, vkey = ARGV[i], tonumber(ARGV[i + 1]), KEYS[2 + (i - 2) / 2]
  local here = tonumber(redis.call('ZSCORE', KEYS[1], user))
  if (not here or (here >= low and here < high)) and version_of(redis.call('HGET', vkey, user)) <= ver then
    if in_carve and in_carve(here) then table.insert(noted, user) end
    if here then removed = removed + redis.call('ZREM', KEYS[1], user) end
    redis.call('HSET', vkey, user, tombstone(ver, now))
  end
end
if #noted > 0 then call_bulk('SADD', dirty, noted) end
return {'ok', keep_size(KEYS[1], lo, hi), removed}
