-- docs/architecture.md write path step 3: absolute, versioned writes into one shard, fenced by its descriptor.
-- KEYS: zset, descriptor, then the versions hash of each update's user (see _keys.py).
-- ARGV: expected descriptor, mode, the shard's range in stored scores [lo, hi), then (user, stored score, ver)...
-- Mode 'write' writes an update only if its ver is newer than the user's registered version; 'rewrite' (repair,
-- rebuilding a shard from the authoritative index) also when it equals it, so a member whose shard data was lost
-- while the register survived comes back.
-- A MIGRATING shard (a job carves from it) notes every member written whose old or new stored score lies in the
-- carved range, for the job's catch-up.
-- Returns {'stale', actual descriptor} or {'ok', size}: size = the shard's members inside its range after the
-- writes, also kept in the board's sizes on this node (ranks are counted by shard_tally or shard_count, behind these
-- writes in the same round trip).
local actual = write_fence(KEYS[2], ARGV[1])
if actual then return {'stale', actual} end
local mode = ARGV[2]
local lo, hi = ARGV[3], ARGV[4]
local slack = mode == 'rewrite' and 1 or 0
local in_carve, dirty = carving(KEYS[2], ARGV[1])
local adds, noted = {}, {}
for i = 5, #ARGV, 3 do
  local user, ver, vkey = ARGV[i], ARGV[i + 2], KEYS[2 + (i - 2) / 3]
  if tonumber(ver) + slack > version_of(redis.call('HGET', vkey, user)) then
    redis.call('HSET', vkey, user, ver)
    -- One user appears once per call (the caller sends each member's final state), so one ZADD at the
    -- end writes what per-member ZADDs would.
    table.insert(adds, ARGV[i + 1])
    table.insert(adds, user)
    if in_carve and (in_carve(tonumber(ARGV[i + 1])) or in_carve(tonumber(redis.call('ZSCORE', KEYS[1], user)))) then
      table.insert(noted, user)
    end
  end
end
call_bulk('ZADD', KEYS[1], adds)
if #noted > 0 then call_bulk('SADD', dirty, noted) end
return {'ok', keep_size(KEYS[1], lo, hi)}
