-- Read path: positions start..stop (0-based, inclusive) of one shard's range, best first.
-- KEYS: zset, descriptor. ARGV: read fence (the descriptor without its state, see shard_count), start, stop, the
-- shard's range in stored scores [lo, hi) (what lies outside it in the key is a finished job's leftover).
-- Returns {'stale', actual} or {'ok', better, user_1, stored_1, ...}: better = members strictly
-- better than the first one returned (so its competition rank needs no second round trip).
local d = redis.call('GET', KEYS[2])
if not d or string.sub(d, 1, #ARGV[1]) ~= ARGV[1] then return {'stale', d or ''} end
local lo, hi = ARGV[4], ARGV[5]
local below = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. lo)
local size = redis.call('ZCOUNT', KEYS[1], lo, '(' .. hi)
local start, stop = tonumber(ARGV[2]), math.min(tonumber(ARGV[3]), size - 1)
local out = {'ok', 0}
if start > stop then return out end
local page = redis.call('ZRANGE', KEYS[1], below + start, below + stop, 'WITHSCORES')
if #page > 0 then out[2] = redis.call('ZCOUNT', KEYS[1], lo, '(' .. page[2]) end
for _, v in ipairs(page) do table.insert(out, v) end
return out
