-- docs/architecture.md write path step 4 (and removal): clear finished crossings on the index, compare-and-set.
-- KEYS[i]: the index hash of crossing i; the last key: the board's pending-writes zset on this node.
-- ARGV: per crossing: user, ver, from, to (distinct users), as the caller read them.
-- Clears the intent (or, for a removal, to == '', leaves the tombstone '~ver|ms') and the member's pending-write
-- mark. A crossing whose entry no longer has this intent (another router finished it, or a newer version exists)
-- is left alone: both mean "nothing left to do here". Returns how many were cleared.
local done, advanced = {}, 0
local now = node_ms()
for i = 1, #ARGV, 4 do
  local user, ver, from, to, key = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], KEYS[(i + 3) / 4]
  local e = parse_entry(redis.call('HGET', key, user))
  if e and e.ver == ver and e.from == from and e.to == to then
    advanced = advanced + 1
    if to == '' then
      redis.call('HSET', key, user, tombstone(ver, now))
    else
      e.from, e.to = '', ''
      redis.call('HSET', key, user, format_entry(e))
    end
    table.insert(done, user)
  end
end
call_bulk('ZREM', KEYS[#KEYS], done)
return advanced
