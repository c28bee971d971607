-- Read path: positions start..stop (0-based, inclusive) of one shard, best first.
-- KEYS: zset, descriptor. ARGV: expected descriptor, start, stop.
-- Returns {'stale', actual} or {'ok', better, user_1, stored_1, ...}: better = members strictly
-- better than the first one returned (so its competition rank needs no second round trip).
local d = redis.call('GET', KEYS[2])
if d ~= ARGV[1] then return {'stale', d or ''} end
local page = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'WITHSCORES')
local better = 0
if #page > 0 then better = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. page[2]) end
local out = {'ok', better}
for _, v in ipairs(page) do table.insert(out, v) end
return out
