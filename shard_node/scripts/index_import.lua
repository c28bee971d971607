-- `rankshard leaderboards import`: the index commit of members new to the board (the bulk path of
-- DESIGN.md write path step 2, without request ids or operators: a new member's score is the value).
-- KEYS[i]: the index hash of member i; the last key: the node's pending-writes zset of the board.
-- ARGV: the map 'b1 b2 .. bn|id1 .. id(n+1)' (as index_apply), then per member: user, score.
-- A member with an entry, or a tombstone (removed: its versions must stay above the old), is left as
-- it is. Each new member gets version 1 in the shard its score falls in, and a pending-write mark
-- (the sweeper finishes its shard write if the importer dies first). Returns the home shard of each
-- member, '' for those left alone.
local target = shard_finder(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moves_key = KEYS[#KEYS]
local out, seen = {}, {}
for i = 2, #ARGV, 2 do
  local user, score, key = ARGV[i], tonumber(ARGV[i + 1]), KEYS[i / 2]
  if seen[user] or redis.call('HEXISTS', key, user) == 1 then
    table.insert(out, '')
  else
    seen[user] = true
    local home = target(score)
    redis.call('HSET', key, user, format_entry({score = score, ver = 1, home = home, from = '', to = '', rgen = ''}))
    redis.call('ZADD', moves_key, now, user)
    table.insert(out, home)
  end
end
return out
