-- docs/architecture.md write path step 4 (source side) for one shard, as repair removes (crossings drop from all of
-- a node's shards in one shard_drop call): drop members whose registered version is not newer than the given one,
-- as `remove_members` does.
-- KEYS: zset, descriptor, then the versions hash of each user. ARGV: expected descriptor, the shard's range in
-- stored scores [lo, hi), then (user, ver)...
-- Returns {'stale', actual descriptor} or {'ok', size after (inside the range, kept in the board's sizes on this
-- node), removed count}.
local actual = write_fence(KEYS[2], ARGV[1])
if actual then return {'stale', actual} end
local lo, hi = ARGV[2], ARGV[3]
local removed = remove_members(KEYS[1], KEYS[2], ARGV[1], tonumber(lo), tonumber(hi), 4, #ARGV, 2,
  function(i) return KEYS[2 + (i - 2) / 2] end)
return {'ok', keep_size(KEYS[1], lo, hi), removed}
