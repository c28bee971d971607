-- docs/architecture.md write path step 3: absolute, versioned writes into every shard of a batch on this node, in one
-- call: each shard fenced by its own descriptor and written as shard_apply writes one. A shard whose fence refuses is
-- left alone and answered 'stale'; the others are written all the same. The descriptors are read in one MGET and the
-- kept sizes in one HMGET, so a batch costs a node one call and two reads however many shards it touches.
-- No KEYS (nodes are standalone: undeclared keys are fine). ARGV: mode (as shard_apply's), the board's sizes hash
-- 'rs:n:{b}/' and its changes zset 'rs:o:{b}/' (see _prelude's sizes_of), the board's zset stem 'rs:z:{b}/' and
-- descriptor stem 'rs:d:{b}/', then per shard: its id, its expected descriptor, its range in stored scores [lo, hi),
-- the number k of its writes, then k times (user, stored score, ver, the user's versions hash (see _keys.py)).
-- Returns per shard, in the order sent, shard_apply's answer: {'stale', actual descriptor} or {'ok', size}.
local slack = ARGV[1] == 'rewrite' and 1 or 0
local key, okey, zstem, dstem = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local starts, dkeys = {}, {}
local i, n = 6, #ARGV
while i <= n do
  starts[#starts + 1] = i
  dkeys[#dkeys + 1] = dstem .. ARGV[i]
  i = i + 5 + 4 * tonumber(ARGV[i + 4])
end
local held = {}
for j = 1, #dkeys, 4000 do
  local got = redis.call('MGET', unpack(dkeys, j, math.min(j + 3999, #dkeys)))
  for k = 1, #got do held[j + k - 1] = got[k] end
end
local out, fields, counts, ranges = {}, {}, {}, {}
for j = 1, #starts do
  local at = starts[j]
  local s, expected, lo, hi = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local actual = write_fence(dkeys[j], expected, held[j])
  if actual then
    out[j] = {'stale', actual}
  else
    local zkey = zstem .. s
    apply_writes(zkey, dkeys[j], expected, slack, at + 5, at + 4 + 4 * tonumber(ARGV[at + 4]))
    local size = redis.call('ZCOUNT', zkey, lo, '(' .. hi)
    out[j] = {'ok', size}
    fields[#fields + 1], counts[#counts + 1], ranges[#ranges + 1] = s, size, lo .. ' ' .. hi
  end
end
if #fields > 0 then keep_sizes(key, okey, fields, counts, ranges) end
return out
