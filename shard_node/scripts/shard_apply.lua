-- docs/architecture.md write path step 3: absolute, versioned writes into one shard, fenced by its descriptor.
-- KEYS: zset, descriptor, then the versions hash of each update's user (see _keys.py).
-- ARGV: expected descriptor, mode, then (user, stored score, ver)... Mode 'write' writes an update only
-- if its ver is newer than the user's registered version; 'rewrite' (repair, rebuilding a shard from
-- the authoritative index) also when it equals it, so a member whose shard data was lost while the
-- register survived comes back.
-- Returns {'stale', actual descriptor} or {'ok', size}: size = the shard's members after the writes
-- (ranks are counted by shard_count, behind these writes in the same round trip).
local d = redis.call('GET', KEYS[2])
if d ~= ARGV[1] then return {'stale', d or ''} end
local mode = ARGV[2]
local slack = mode == 'rewrite' and 1 or 0
local adds = {}
for i = 3, #ARGV, 3 do
  local user, ver, vkey = ARGV[i], ARGV[i + 2], KEYS[2 + i / 3]
  local write = false
  if tonumber(ver) + slack > version_of(redis.call('HGET', vkey, user)) then
    redis.call('HSET', vkey, user, ver)
    write = true
  end
  -- One user appears once per call (the caller sends each member's final state), so one ZADD at the
  -- end writes what per-member ZADDs would.
  if write then table.insert(adds, ARGV[i + 1]); table.insert(adds, user) end
end
call_bulk('ZADD', KEYS[1], adds)
return {'ok', redis.call('ZCARD', KEYS[1])}
