-- `rankshard repair`: index entries rebuilt from the shards after their index node lost its data.
-- KEYS[i]: the index hash of member i. ARGV: per member: user, the value repair read ('' for none), the
-- entry to write. A member's entry is written only if its field still holds what repair read, so an
-- update committed since is never overwritten (the next repair looks at it again). Returns the users written.
local written = {}
for i = 1, #ARGV, 3 do
  local user, seen, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = KEYS[(i + 2) / 3]
  if (redis.call('HGET', key, user) or '') == seen then
    redis.call('HSET', key, user, entry)
    table.insert(written, user)
  end
end
return written
