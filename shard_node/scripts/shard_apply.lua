-- DESIGN.md write path step 3: absolute, versioned writes into one shard, fenced by its descriptor.
-- KEYS: zset, versions hash, descriptor. ARGV: expected descriptor, then (user, stored score, ver)...
-- Returns {'stale', actual descriptor} or {'ok', size, c1, c2, ...}: size = the shard's members after
-- the writes, ci = members strictly better than update i's stored score (its rank inside, minus one).
local d = redis.call('GET', KEYS[3])
if d ~= ARGV[1] then return {'stale', d or ''} end
for i = 2, #ARGV, 3 do
  local user, ver = ARGV[i], tonumber(ARGV[i + 2])
  if ver > version_of(redis.call('HGET', KEYS[2], user)) then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], user)
    redis.call('HSET', KEYS[2], user, ver)
  end
end
local out = {'ok', redis.call('ZCARD', KEYS[1])}
for i = 2, #ARGV, 3 do
  table.insert(out, redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[i + 1]))
end
return out
