-- docs/architecture.md, rebalancing (COPY, CATCH-UP): the target of a job made to agree with its source, member by
-- member. KEYS: the target zset, its descriptor, then the versions hash of each member on the target's node.
-- ARGV: the target's expected descriptor, the carved range in stored scores [lo, hi), '1' when the source is on
-- this node (one version register for both), then per member: user, stored score at the source ('' when it is not
-- there), the version the source's node registers.
-- A member the source holds inside the range is written unless this node registers a newer version (equal is
-- written: on one node the register is the source's own, across nodes an older copy). Otherwise its copy in the
-- range is removed: the target's members in the range come only from these settles, and the source's state read
-- later is never older, so the copy is stale whatever this node registers (a newer version here is the member's
-- write into another shard on this node, not a newer copy). Across nodes the register then keeps a tombstone
-- unless it is newer.
-- The target's kept size (see _prelude's sizes_of) is counted again. Returns {'stale', actual} or {'ok', written,
-- removed}.
local d = redis.call('GET', KEYS[2])
if d ~= ARGV[1] then return {'stale', d or ''} end
local lo, hi, same = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local now = node_ms()
local adds, gone, written = {}, {}, 0
for i = 5, #ARGV, 3 do
  local user, stored, ver, vkey = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), KEYS[2 + (i - 2) / 3]
  local registered = version_of(redis.call('HGET', vkey, user))
  if stored and stored >= lo and stored < hi then
    if ver >= registered then
      table.insert(adds, stored)
      table.insert(adds, user)
      if registered < ver then redis.call('HSET', vkey, user, ver) end
    end
  else
    local here = tonumber(redis.call('ZSCORE', KEYS[1], user))
    if here and here >= lo and here < hi then
      table.insert(gone, user)
      if not same and registered < ver then redis.call('HSET', vkey, user, tombstone(ver, now)) end
    end
  end
end
call_bulk('ZADD', KEYS[1], adds)
call_bulk('ZREM', KEYS[1], gone)
recount(KEYS[1])
return {'ok', #adds / 2, #gone}
