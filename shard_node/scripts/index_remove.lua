-- RemoveMember's commit point: record a removal intent (from '@score', to '') at a new version.
-- KEYS[1]: the index hash, KEYS[2]: the pending-moves zset. ARGV: user, the router's map epoch.
-- Returns {'stale', floor} (the router's map is older than the board's floor here: nothing written),
-- {'absent'}, {'intent', score, ver, home, from, to} when another move must finish first, or {'ok', score, ver, from}.
local user = ARGV[1]
local floor = below_floor(KEYS[2], ARGV[2])
if floor then return {'stale', floor} end
local e = parse_entry(redis.call('HGET', KEYS[1], user))
if not e then return {'absent'} end
if e.from ~= '' then return {'intent', e.score, e.ver, e.home, e.from, e.to} end
e.ver, e.home, e.from, e.to = e.ver + 1, '@', from_score(e.score), ''
redis.call('HSET', KEYS[1], user, format_entry(e))
redis.call('ZADD', KEYS[2], node_ms(), user)
return {'ok', e.score, e.ver, e.from}
