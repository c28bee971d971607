-- Shard data changed outside the data path (rebalancing, repair), with the board's kept sizes on this node (see
-- _prelude's sizes_of) kept right in the same call. KEYS: the zset, the descriptor. ARGV[1], the mode:
-- 'range' lo hi: the zset's members in [lo, hi) (stored scores) removed, the kept size counted again (a job
-- clearing its target); returns how many were removed.
-- 'drop': the zset and the descriptor deleted (a job's new target, rolled back); returns 1.
-- 'install' descriptor: the descriptor set unless the node holds one (repair, after a node lost it); returns 1
-- when it was set, else 0.
-- 'forget': the shard's kept size dropped and the sizes' token renewed (repair, after check found a kept size that
-- disagrees with the shard); returns 1.
local mode = ARGV[1]
if mode == 'range' then
  local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[2], '(' .. ARGV[3])
  recount(KEYS[1])
  return removed
elseif mode == 'drop' then
  redis.call('DEL', KEYS[1], KEYS[2])
  sizes_changed(KEYS[1])
  return 1
elseif mode == 'install' then
  if redis.call('SET', KEYS[2], ARGV[2], 'NX') then
    sizes_changed(KEYS[1])
    return 1
  end
  return 0
elseif mode == 'forget' then
  sizes_changed(KEYS[1])
  return 1
end
return redis.error_reply('shard_clear: unknown mode ' .. tostring(mode))
