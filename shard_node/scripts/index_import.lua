-- `rankshard leaderboards import`: the index commit of members new to the board (the bulk path of
-- docs/architecture.md write path step 2, without request ids or operators: a new member's score is the value).
-- KEYS[i]: the index hash of member i; the last key: the node's pending-writes zset of the board.
-- ARGV: the router's map epoch (refused below the board's floor, as index_apply), then per member: user, score
-- (an integer in its canonical decimal form, as the caller validated it: it goes into the entry as sent).
-- A member with an entry, or a tombstone (removed: its versions must stay above the old), is left as
-- it is. Each new member gets its first version (first_version: 1 unless tombstones were collected from
-- its index slot) in the shard its score falls in, and a pending-write mark (the sweeper finishes its
-- shard write if the importer dies first). Returns {'stale', floor}, or the version of each member, 0 for those
-- left alone.
local floor = below_floor(KEYS[#KEYS], ARGV[1])
if floor then return {'stale', floor} end
local now = node_ms()
local out, marks = {}, {}
for i = 2, #ARGV, 2 do
  local user, score, key = ARGV[i], ARGV[i + 1], KEYS[i / 2]
  local ver = first_version(key, nil)
  -- HSETNX: an entry or a tombstone stays (so does the first of a user sent twice). The entry is
  -- format_entry's "score|ver|@|||" (no move, no request-id records).
  if redis.call('HSETNX', key, user, score .. string.format('|%d|@|||', ver)) == 1 then
    table.insert(out, ver)
    table.insert(marks, now)
    table.insert(marks, user)
  else
    table.insert(out, 0)
  end
end
call_bulk('ZADD', KEYS[#KEYS], marks)
return out
