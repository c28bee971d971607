-- docs/architecture.md, rebalancing (CATCH-UP): members noted in a source's dirty set, to be settled in the target.
-- KEYS[1]: the dirty set, KEYS[2]: the taken set. ARGV: at most how many.
-- Members a round took stay in the taken set until it settled them (carve_settle, then SREM), so a job that dies
-- in between loses none: a resumed round takes those again first. Returns the members taken and how many are
-- still dirty after this.
local taken = redis.call('SRANDMEMBER', KEYS[2], tonumber(ARGV[1]))
if #taken == 0 then
  taken = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
  if #taken > 0 then call_bulk('SADD', KEYS[2], taken) end
end
return {taken, redis.call('SCARD', KEYS[1])}
