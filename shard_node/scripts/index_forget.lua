-- Clears pending-write marks once the writes they stand for reached their shards (see index_apply).
-- KEYS[i]: the index hash of user i, the last key: the board's pending-writes zset on this node.
-- ARGV: (user, ver)... A mark stays when a move is pending or a newer version exists (the writer of
-- that version owns the mark). Returns how many marks were cleared.
local done, call, match = {}, redis.call, string.match
for i = 1, #ARGV, 2 do
  local user, ver = ARGV[i], tonumber(ARGV[i + 1])
  -- An entry's version and pending crossing (parse_entry's fields 2 and 4), read without building the entry.
  local raw = call('HGET', KEYS[(i + 1) / 2], user)
  local v, from = nil, nil
  if raw and string.byte(raw, 1) ~= 126 then v, from = match(raw, '^[^|]*|(%d+)|[^|]*|([^|]*)') end
  if not (v and (from ~= '' or tonumber(v) > ver)) then done[#done + 1] = user end
end
local before = call('ZCARD', KEYS[#KEYS])
call_bulk('ZREM', KEYS[#KEYS], done)
return before - call('ZCARD', KEYS[#KEYS])
