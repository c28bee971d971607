-- docs/architecture.md write path steps 2 and 4 (and removal): advance pending moves on the index, compare-and-set.
-- KEYS[i]: the index hash of move i; the last key: the board's pending-writes zset on this node.
-- ARGV: step ('home' | 'done'), then per move: user, ver, from, to (distinct users).
-- 'home' points each entry at its destination; 'done' clears the intent (or, for a removal, to == '',
-- leaves the tombstone '~ver|ms') and the member's pending-write mark. A move whose entry no longer has
-- this intent (another router finished it, or a newer version exists) is left alone: both mean
-- "nothing left to do here". Returns how many moves were advanced.
local step, done, advanced = ARGV[1], {}, 0
local now = node_ms()
for i = 2, #ARGV, 4 do
  local user, ver, from, to, key = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], KEYS[(i + 2) / 4]
  local e = parse_entry(redis.call('HGET', key, user))
  if e and e.ver == ver and e.from == from and e.to == to then
    advanced = advanced + 1
    if step == 'home' then
      e.home = to
      redis.call('HSET', key, user, format_entry(e))
    else
      if to == '' then
        redis.call('HSET', key, user, tombstone(ver, now))
      else
        e.from, e.to = '', ''
        redis.call('HSET', key, user, format_entry(e))
      end
      table.insert(done, user)
    end
  end
end
call_bulk('ZREM', KEYS[#KEYS], done)
return advanced
