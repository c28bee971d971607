-- docs/architecture.md, rebalancing: a job's compare-and-set of one shard descriptor.
-- KEYS[1]: the descriptor; KEYS[2], KEYS[3], KEYS[4]: the shard's carve hash, dirty set and taken set.
-- ARGV: what it becomes ('' deletes it), then what it may be now ('' for absent). Also, per ARGV[1]'s state:
-- MIGRATING (a job starts carving): ARGV[2], ARGV[3] are the carved range in stored scores, written to the carve
-- hash in the same call, so every write after the switch is noted; FROZEN: ARGV[2] is the freeze's length in ms
-- (its deadline is set, or pushed back when it is frozen already); COMMITTING: only before the freeze's deadline;
-- ACTIVE or '': the carve keys go. A descriptor already at the target answers ok (a resumed job). A change drops the
-- shard's kept size and renews the sizes' token (see _prelude's sizes_changed).
-- Returns {'ok'} or {'stale', actual} ('' for absent).
local target = ARGV[1]
local state = target ~= '' and state_of(target) or ''
local first = 2
if state == 'MIGRATING' then first = 4 elseif state == 'FROZEN' then first = 3 end
local d = redis.call('GET', KEYS[1]) or ''
local allowed = d == target
for i = first, #ARGV do
  if d == ARGV[i] then allowed = true end
end
if not allowed then return {'stale', d} end
if state == 'COMMITTING' and d ~= target then
  local deadline = tonumber(redis.call('HGET', KEYS[2], 'deadline') or '0')
  if node_ms() >= deadline then return {'stale', d} end
end
if target == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], target) end
if d ~= target then sizes_changed(KEYS[1]) end
if state == 'MIGRATING' and d ~= target then
  redis.call('DEL', KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[2], 'lo', ARGV[2], 'hi', ARGV[3], 'deadline', 0)
elseif state == 'FROZEN' then
  redis.call('HSET', KEYS[2], 'deadline', node_ms() + tonumber(ARGV[2]))
elseif state == 'ACTIVE' or state == '' then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
return {'ok'}
