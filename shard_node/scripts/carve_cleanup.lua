-- docs/architecture.md, rebalancing (CLEANUP): what a finished job left in its source's key, removed in batches.
-- KEYS: the zset, then the versions hash of each member. ARGV: the range in stored scores [lo, hi) that left,
-- '1' when the members now live on another node (their registers here become tombstones, collected in time), then
-- the members. Only members still in the range are removed (one written back in since is live: it stays).
-- Returns how many were removed.
local lo, hi, away = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local now = node_ms()
local gone = {}
for i = 4, #ARGV do
  local s = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if s and s >= lo and s < hi then
    table.insert(gone, ARGV[i])
    if away then
      local vkey = KEYS[i - 2]
      local raw = redis.call('HGET', vkey, ARGV[i])
      if raw and string.sub(raw, 1, 1) ~= '~' then redis.call('HSET', vkey, ARGV[i], tombstone(version_of(raw), now)) end
    end
  end
end
call_bulk('ZREM', KEYS[1], gone)
recount(KEYS[1]) -- nothing in its range left, as long as the range is the one the job left: counted all the same
return #gone
