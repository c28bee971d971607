-- docs/architecture.md write path step 4 for the crossings that stay on this node (their source and destination
-- shards both live here): shard_write's writes, then shard_drop's removals, in one call. A member crossing between
-- two shards of one node is so never in both, and its crossing costs the node one call, where a write round and a
-- drop round cost two. The removals are made only when no write's fence refused: a crossing leaves its source only
-- once its destination holds it (the caller then finishes it again under a newer map).
-- No KEYS. ARGV: shard_write's keys (the board's sizes hash, its changes zset, its zset and descriptor stems), w,
-- then shard_write's blocks (writes in mode 'write') up to ARGV[w], then shard_drop's blocks to the end.
-- Returns {shard_write's answer, shard_drop's answer}, the second {} when the removals were not made.
local key, okey, zstem, dstem, w = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local written = change_shards(key, okey, zstem, dstem, 6, w, 4, writes_change(0))
for j = 1, #written do
  if written[j][1] == 'stale' then return {written, {}} end
end
return {written, change_shards(key, okey, zstem, dstem, w + 1, #ARGV, 3, drops_change)}
