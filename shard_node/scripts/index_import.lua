-- `rankshard leaderboards import`: the index commit of members new to the board (the bulk path of
-- DESIGN.md write path step 2, without request ids or operators: a new member's score is the value).
-- KEYS[i]: the index hash of member i; the last key: the node's pending-writes zset of the board.
-- ARGV: the map 'b1 b2 .. bn|id1 .. id(n+1)' (as index_apply), then per member: user, score (an integer
-- in its canonical decimal form, as the caller validated it: it goes into the entry as sent).
-- A member with an entry, or a tombstone (removed: its versions must stay above the old), is left as
-- it is. Each new member gets the first version of a new member (the same for all of this call: see
-- first_version) in the shard its score falls in, and a pending-write mark (the sweeper finishes its
-- shard write if the importer dies first). Returns that version, then the home shard of each member,
-- '' for those left alone.
local target = shard_finder(ARGV[1])
local now_s, now = node_time()
local ver = string.format('%d', first_version(0, now_s))
local out, marks = {ver}, {}
for i = 2, #ARGV, 2 do
  local user, score = ARGV[i], ARGV[i + 1]
  local home = target(tonumber(score))
  -- HSETNX: an entry or a tombstone stays (so does the first of a user sent twice). The entry is
  -- format_entry's "score|ver|home|||" (no move, no request-id records).
  if redis.call('HSETNX', KEYS[i / 2], user, score .. '|' .. ver .. '|' .. home .. '|||') == 1 then
    table.insert(out, home)
    table.insert(marks, now)
    table.insert(marks, user)
  else
    table.insert(out, '')
  end
end
call_bulk('ZADD', KEYS[#KEYS], marks)
return out
