-- Read path, full count: sizes of the shards a node holds, plus counts inside them, in one call. Every count is
-- clipped to the shard's own range, so what a finished job left behind in a key is never counted
-- (docs/architecture.md). Reads take shard_tally's shorter way while the sizes' token they last saw here holds;
-- this call checks every descriptor, counts every shard, keeps the sizes (see _prelude's sizes_of) and answers the
-- token they are good under.
-- No KEYS: ARGV[1] is 'zset_1 descriptor_1 ... zset_n descriptor_n' (key names from _keys.py, packed so
-- that a node holding many shards costs one argument per call, not two per shard; nodes are
-- standalone, so undeclared keys are fine), ARGV[2] the n read fences joined by newlines (each a descriptor
-- without its state, 'lower|upper|generation|': reads go on whatever the state), ARGV[3] the n ranges in stored
-- scores 'lo_1 hi_1 ... lo_n hi_n' ([lo, hi)), then queries (kind, shard position 1..n, arg): 'b' = members
-- strictly better than stored score arg, 'r' = 0-based position of member arg in the range (-1 if absent).
-- Returns {'stale', position, actual descriptor} or {'ok', token, change number, size_1..size_n, answer_1, ...}:
-- the sizes are those at that number of the node's size changes (see _prelude's sizes_of).
local keys, bounds = {}, {}
for k in string.gmatch(ARGV[1], '%S+') do table.insert(keys, k) end
for b in string.gmatch(ARGV[3], '%S+') do table.insert(bounds, b) end
local out = {'ok', '', ''}
local counted, fields = {}, {}
local p = 0
for fence in string.gmatch(ARGV[2], '[^\n]+') do
  p = p + 1
  local d = redis.call('GET', keys[2 * p])
  if not d or string.sub(d, 1, #fence) ~= fence then return {'stale', p, d or ''} end
  local n = redis.call('ZCOUNT', keys[2 * p - 1], bounds[2 * p - 1], '(' .. bounds[2 * p])
  table.insert(out, n)
  local _, s = sizes_of(keys[2 * p - 1])
  table.insert(counted, n)
  table.insert(fields, s)
end
if p > 0 then
  -- Sizes kept are right by construction; one not kept yet (or, after a fault, wrong) is kept now as a change, so
  -- that readers which saw the sizes before learn of it.
  local key, _, okey = sizes_of(keys[1])
  out[2] = redis.call('HGET', key, '') or new_sizes_token(key)
  for i = 1, p, 4000 do
    local kept = redis.call('HMGET', key, unpack(fields, i, math.min(i + 3999, p)))
    for j = 1, #kept do
      local at = i + j - 1
      if tonumber(kept[j]) ~= counted[at] then
        size_kept(key, fields[at], okey, counted[at], bounds[2 * at - 1] .. ' ' .. bounds[2 * at])
      end
    end
  end
  out[3] = redis.call('HGET', key, '#') or '0'
end
for q = 4, #ARGV, 3 do
  local p = tonumber(ARGV[q + 1])
  table.insert(out, count_query(ARGV[q], keys[2 * p - 1], bounds[2 * p - 1], bounds[2 * p], ARGV[q + 2]))
end
return out
