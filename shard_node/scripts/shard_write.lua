-- docs/architecture.md write path step 3: absolute, versioned writes into every shard of a batch on this node, in one
-- call: each shard fenced by its own descriptor and written as shard_apply writes one. A shard whose fence refuses is
-- left alone and answered 'stale'; the others are written all the same (see _prelude's change_shards): a batch costs
-- a node one call and two reads however many shards it touches.
-- No KEYS (nodes are standalone: undeclared keys are fine). ARGV: mode (as shard_apply's), the board's sizes hash
-- 'rs:n:{b}/' and its changes zset 'rs:o:{b}/' (see _prelude's sizes_of), the board's zset stem 'rs:z:{b}/' and
-- descriptor stem 'rs:d:{b}/', then per shard: its id, its expected descriptor, its range in stored scores [lo, hi),
-- the number k of its writes, then k times (user, stored score, ver, the user's versions hash (see _keys.py)).
-- Returns per shard, in the order sent, shard_apply's answer: {'stale', actual descriptor} or {'ok', size}.
local slack = ARGV[1] == 'rewrite' and 1 or 0
return change_shards(ARGV[2], ARGV[3], ARGV[4], ARGV[5], 6, #ARGV, 4, writes_change(slack))
