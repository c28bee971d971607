-- Read path: sizes of the shards a node holds, plus counts inside them, in one call.
-- No KEYS: ARGV[1] is 'zset_1 descriptor_1 ... zset_n descriptor_n' (key names from _keys.py, packed so
-- that a node holding many shards costs one argument per call, not two per shard; nodes are
-- standalone, so undeclared keys are fine), ARGV[2] the n expected descriptors joined by newlines,
-- then queries (kind, shard position 1..n, arg): 'b' = members strictly better than stored score arg,
-- 'r' = 0-based position of member arg (-1 if absent).
-- Returns {'stale', position, actual descriptor} or {'ok', card_1..card_n, answer_1, ...}.
local keys = {}
for k in string.gmatch(ARGV[1], '%S+') do table.insert(keys, k) end
local out = {'ok'}
local p = 0
for expected in string.gmatch(ARGV[2], '[^\n]+') do
  p = p + 1
  local d = redis.call('GET', keys[2 * p])
  if d ~= expected then return {'stale', p, d or ''} end
  table.insert(out, redis.call('ZCARD', keys[2 * p - 1]))
end
for q = 3, #ARGV, 3 do
  local key = keys[2 * tonumber(ARGV[q + 1]) - 1]
  if ARGV[q] == 'b' then
    table.insert(out, redis.call('ZCOUNT', key, '-inf', '(' .. ARGV[q + 2]))
  else
    table.insert(out, redis.call('ZRANK', key, ARGV[q + 2]) or -1)
  end
end
return out
