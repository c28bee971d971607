-- DESIGN.md write path step 4 (and removal): advance a pending move on the index, compare-and-set.
-- KEYS[1]: the index hash, KEYS[2]: the pending-moves zset. ARGV: step ('home' | 'done'),
-- user, ver, from, to.
-- 'home' points the entry at the destination; 'done' clears the intent (or, for a removal, to == '',
-- leaves the tombstone '~ver') and forgets the pending move. Returns 1 when applied, 0 when the entry
-- no longer has this intent (another router finished it, or a newer version exists): both mean
-- "nothing left to do here".
local step, user, ver, from, to = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local e = parse_entry(redis.call('HGET', KEYS[1], user))
if not e or e.ver ~= ver or e.from ~= from or e.to ~= to then return 0 end
if step == 'home' then
  e.home = to
  redis.call('HSET', KEYS[1], user, format_entry(e))
  return 1
end
if to == '' then
  redis.call('HSET', KEYS[1], user, string.format('~%d', ver))
else
  e.from, e.to = '', ''
  redis.call('HSET', KEYS[1], user, format_entry(e))
end
redis.call('ZREM', KEYS[2], user)
return 1
