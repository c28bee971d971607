-- Read path, the short way: what shard_count answers, from the board's sizes kept on this node (see _prelude's
-- sizes_of), as changes to the sizes the caller already holds, instead of a descriptor check and a count per shard.
-- The caller holds the sizes at change number c under token t (from shard_count, then from this script's answers);
-- every descriptor change renews the token, and every change to a shard's members inside its range keeps its size
-- with a new change number, so under an unchanged token those sizes updated with the ones changed since c are what
-- shard_count would count now. The cost grows with the shards changed since c, not with the node's shards.
-- No KEYS. ARGV: the sizes hash 'rs:n:{b}/', t, c, the changes zset 'rs:o:{b}/', the zset key stem 'rs:z:{b}/', then
-- queries (kind, shard id, lo, hi, arg) as shard_count's, with the shard's range in stored scores [lo, hi).
-- Returns {'recheck'} (the token moved on: ask shard_count) or {'ok', change number now, k, id_1, size_1, ...,
-- id_k, size_k, answer_1, ...}: the k shards whose size changed since c (some may be shards the caller does not
-- count here: a job's target being filled).
local key = ARGV[1]
local head = redis.call('HMGET', key, '', '#')
if head[1] ~= ARGV[2] then return {'recheck'} end
local now = head[2] or '0'
local out = {'ok', now, 0}
if now ~= ARGV[3] then
  local changed = redis.call('ZRANGEBYSCORE', ARGV[4], '(' .. ARGV[3], '+inf')
  out[3] = #changed
  for i = 1, #changed, 4000 do
    local sizes = redis.call('HMGET', key, unpack(changed, i, math.min(i + 3999, #changed)))
    for j = 1, #sizes do
      out[#out + 1] = changed[i + j - 1]
      out[#out + 1] = tonumber(sizes[j]) or -1
    end
  end
end
local stem = ARGV[5]
for q = 6, #ARGV, 5 do
  out[#out + 1] = count_query(ARGV[q], stem .. ARGV[q + 1], ARGV[q + 2], ARGV[q + 3], ARGV[q + 4])
end
return out
