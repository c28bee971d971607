-- docs/architecture.md write path step 4 (source side) and RemoveMember: drop members whose registered version is
-- not newer than the given one, leaving a tombstone '~ver|ms' so a late older write cannot bring them back.
-- KEYS: zset, descriptor, then the versions hash of each user. ARGV: expected descriptor, then (user, ver)...
-- Returns {'stale', actual descriptor} or {'ok', size after, removed count}.
local d = redis.call('GET', KEYS[2])
if d ~= ARGV[1] then return {'stale', d or ''} end
local removed = 0
local now = node_ms()
for i = 2, #ARGV, 2 do
  local user, ver, vkey = ARGV[i], tonumber(ARGV[i + 1]), KEYS[2 + i / 2]
  if version_of(redis.call('HGET', vkey, user)) <= ver then
    removed = removed + redis.call('ZREM', KEYS[1], user)
    redis.call('HSET', vkey, user, tombstone(ver, now))
  end
end
return {'ok', redis.call('ZCARD', KEYS[1]), removed}
