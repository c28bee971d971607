-- docs/architecture.md write path step 3: absolute, versioned writes into every shard of a batch on this node, in one
-- call: each shard fenced by its own descriptor and written as shard_apply writes one. A shard whose fence refuses is
-- left alone and answered 'stale'; the others are written all the same.
-- No KEYS (nodes are standalone: undeclared keys are fine). ARGV: mode (as shard_apply's), the board's sizes hash
-- 'rs:n:{b}/' and its changes zset 'rs:o:{b}/' (see _prelude's sizes_of), the board's zset stem 'rs:z:{b}/' and
-- descriptor stem 'rs:d:{b}/', then per shard: its id, its expected descriptor, its range in stored scores [lo, hi),
-- the number k of its writes, then k times (user, stored score, ver, the user's versions hash (see _keys.py)).
-- Returns per shard, in the order sent, shard_apply's answer: {'stale', actual descriptor} or {'ok', size}.
local slack = ARGV[1] == 'rewrite' and 1 or 0
local key, okey, zstem, dstem = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out = {}
local i, n = 6, #ARGV
while i <= n do
  local s, expected, lo, hi = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local first, last = i + 5, i + 4 + 4 * tonumber(ARGV[i + 4])
  local dkey = dstem .. s
  local actual = write_fence(dkey, expected)
  if actual then
    out[#out + 1] = {'stale', actual}
  else
    out[#out + 1] = {'ok', apply_writes(zstem .. s, dkey, expected, slack, lo, hi, first, last, key, s, okey)}
  end
  i = last + 1
end
return out
