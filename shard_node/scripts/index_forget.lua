-- Clears pending-write marks once the writes they stand for reached their shards (see index_apply).
-- KEYS[i]: the index hash of user i, the last key: the board's pending-writes zset on this node.
-- ARGV: (user, ver)... A mark stays when a move is pending or a newer version exists (the writer of
-- that version owns the mark). Returns how many marks were cleared.
local done = {}
for i = 1, #ARGV, 2 do
  local user, ver = ARGV[i], tonumber(ARGV[i + 1])
  local e = parse_entry(redis.call('HGET', KEYS[(i + 1) / 2], user))
  if not (e and (e.from ~= '' or e.ver > ver)) then table.insert(done, user) end
end
local before = redis.call('ZCARD', KEYS[#KEYS])
call_bulk('ZREM', KEYS[#KEYS], done)
return before - redis.call('ZCARD', KEYS[#KEYS])
