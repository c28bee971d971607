-- docs/architecture.md, rebalancing (FLOOR): raise a board's epoch floor on an index node.
-- KEYS[1]: the floor. ARGV: the floor wanted. A floor never goes down. Returns the node's time in ms.
local floor = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > floor then redis.call('SET', KEYS[1], ARGV[1]) end
return node_ms()
