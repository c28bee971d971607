-- docs/architecture.md write path step 4 (source side): a batch's crossings leaving every shard of this node, in one
-- call: each shard fenced by its own descriptor and its members dropped as shard_remove drops them. A shard whose
-- fence refuses is left alone and answered 'stale'; the others are dropped from all the same (see _prelude's
-- change_shards).
-- No KEYS (nodes are standalone: undeclared keys are fine). ARGV: the board's sizes hash 'rs:n:{b}/' and its changes
-- zset 'rs:o:{b}/', the board's zset stem 'rs:z:{b}/' and descriptor stem 'rs:d:{b}/', then per shard: its id, its
-- expected descriptor, its range in stored scores [lo, hi), the number k of its removals, then k times (user, ver,
-- the user's versions hash (see _keys.py)).
-- Returns per shard, in the order sent, shard_remove's answer: {'stale', actual descriptor} or {'ok', size, removed}.
return change_shards(ARGV[1], ARGV[2], ARGV[3], ARGV[4], 5, #ARGV, 3, drops_change)
