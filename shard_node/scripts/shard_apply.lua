-- docs/architecture.md write path step 3: absolute, versioned writes into one shard, fenced by its descriptor (the
-- data path and crossings write all of a node's shards in one shard_write call; repair, the sweeper and GetAround's
-- healing of a lost write use this one).
-- KEYS: zset, descriptor (the versions hashes come in ARGV: nodes are standalone, undeclared keys are fine).
-- ARGV: expected descriptor, mode, the shard's range in stored scores [lo, hi), then (user, stored score, ver, the
-- user's versions hash (see _keys.py))...
-- Mode 'write' writes an update only if its ver is newer than the user's registered version; 'rewrite' (repair,
-- rebuilding a shard from the authoritative index) also when it equals it, so a member whose shard data was lost
-- while the register survived comes back.
-- A MIGRATING shard (a job carves from it) notes every member written whose old or new stored score lies in the
-- carved range, for the job's catch-up.
-- Returns {'stale', actual descriptor} or {'ok', size}: size = the shard's members inside its range after the
-- writes, also kept in the board's sizes on this node (ranks are counted by shard_tally or shard_count, behind these
-- writes in the same round trip).
local actual = write_fence(KEYS[2], ARGV[1])
if actual then return {'stale', actual} end
local slack = ARGV[2] == 'rewrite' and 1 or 0
apply_writes(KEYS[1], KEYS[2], ARGV[1], slack, 5, #ARGV)
return {'ok', keep_size(KEYS[1], ARGV[3], ARGV[4])}
