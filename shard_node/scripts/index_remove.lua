-- RemoveMember's commit point: record a removal intent (from = home, to = '') at a new version.
-- KEYS[1]: the index hash, KEYS[2]: the pending-moves zset. ARGV: user.
-- Returns {'absent'}, {'intent', score, ver, home, from, to} when another move must finish first,
-- or {'ok', score, ver, home}.
local user = ARGV[1]
local e = parse_entry(redis.call('HGET', KEYS[1], user))
if not e then return {'absent'} end
if e.from ~= '' then return {'intent', e.score, e.ver, e.home, e.from, e.to} end
e.ver, e.from, e.to = e.ver + 1, e.home, ''
redis.call('HSET', KEYS[1], user, format_entry(e))
redis.call('ZADD', KEYS[2], node_ms(), user)
return {'ok', e.score, e.ver, e.home}
