-- docs/architecture.md, rebalancing: members of a source shard as they stand, each with its registered version.
-- KEYS[1]: the source zset, then the versions hash of each member. ARGV: the members.
-- Returns per member: its stored score ('' when the key does not hold it) and the version its node registers.
local out = {}
for i = 1, #ARGV do
  table.insert(out, redis.call('ZSCORE', KEYS[1], ARGV[i]) or '')
  table.insert(out, version_of(redis.call('HGET', KEYS[1 + i], ARGV[i])))
end
return out
