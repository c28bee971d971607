-- The sweeper's question to an index node: which moves of this board were recorded over ARGV[1] ms
-- ago (by the node's clock, the one that stamped them)? KEYS[1]: the pending-moves zset.
-- ARGV: minimum age in ms, at most how many users. Returns user ids, oldest first.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
