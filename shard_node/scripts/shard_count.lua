-- Read path: sizes of the shards a node holds, plus counts inside them, in one call.
-- KEYS: zset_1, descriptor_1, ..., zset_n, descriptor_n. ARGV: the n expected descriptors joined by
-- newlines (one argument), then queries (kind, shard position 1..n, arg): 'b' = members strictly better than stored score arg,
-- 'r' = 0-based position of member arg (-1 if absent).
-- Returns {'stale', position, actual descriptor} or {'ok', card_1..card_n, answer_1, ...}.
local n = #KEYS / 2
local out = {'ok'}
local p = 0
for expected in string.gmatch(ARGV[1], '[^\n]+') do
  p = p + 1
  local d = redis.call('GET', KEYS[2 * p])
  if d ~= expected then return {'stale', p, d or ''} end
  table.insert(out, redis.call('ZCARD', KEYS[2 * p - 1]))
end
for q = 2, #ARGV, 3 do
  local key = KEYS[2 * tonumber(ARGV[q + 1]) - 1]
  if ARGV[q] == 'b' then
    table.insert(out, redis.call('ZCOUNT', key, '-inf', '(' .. ARGV[q + 2]))
  else
    table.insert(out, redis.call('ZRANK', key, ARGV[q + 2]) or -1)
  end
end
return out
