-- docs/architecture.md write path step 2: the commit point of a batch of updates on one index node.
-- KEYS[2i-1], KEYS[2i]: the index hash of update i and the stem of its request-id hashes (the
-- generations ':gen' are appended here; see _keys.py); the last key: the node's
-- pending-writes zset of the board (user -> ms of the commit). Every member this call changes is
-- marked there until its shard write (or move) is done, so the sweeper can finish what a crashed
-- writer left, whether or not it crossed a boundary.
-- ARGV: mode ('apply' | 'check' | 'each'), operator (1 increment, 2 best, 3 set), descending ('1' | '0'),
--       the router's map epoch, the map's refined cut points 'c1 c2 .. cn' (see cell_finder; one argument, so a
--       board with many shards costs no more to send), then per update: user, value, request id ('' none;
--       any other bytes, NUL included).
-- A router whose epoch is below the board's floor on this node gets {'stale', floor} and nothing is written.
-- Entries never name a shard: a member lives in the shard its score falls in, and an update that moves its
-- score to another cell records a crossing from its previous score ('@score', to '@'); see _keys.py.
-- A member with a pending move (another writer's, not finished) blocks only its own updates: they come
-- back as {'intent', user, score, ver, home, from, to} for the router to finish that move and send them
-- again, and the other updates go ahead (one hot member must not hold a whole batch back).
-- A reused request id with another value, or an overflow: in 'apply' and 'check' mode nothing is
-- written and {'abort', {i, kind}, ...} comes back (a batch is all or nothing); in 'each' mode (unary
-- calls coalesced by the router, each its own request) only that update is refused, as {'refused', kind}.
-- Otherwise {'ok', result per update}: {kind, score, ver, applied, home, from, to, entry score}, kind
-- 'new' | 'upd' | 'dup'; score is the answer (for 'dup': the first call's), the rest describe the
-- member's entry after the call. The usual result, a 'new' or 'upd' that leaves no crossing pending, is three
-- values in the reply itself, not a list: code, score, ver (code 'new', 'upd', or 'kept' for an 'upd' not
-- applied); the entry is then {score, ver, '@', '', ''}. In 'check' mode nothing is written and only the intents
-- come back, {'ok', intent...}: the caller needs nothing else from it (its apply round answers again).
local mode, op, desc = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local floor = below_floor(KEYS[#KEYS], ARGV[4])
if floor then return {'stale', floor} end
local cell = cell_finder(ARGV[5])
local first = 6
-- _keys.py: DEDUP_WINDOW_MS, DEDUP_GEN_MS, DEDUP_DEPTH.
local WINDOW_MS, GEN_MS, DEPTH = 3600000, 300000, 8
-- An entry names its records' generation mod RGEN_MOD (two digits, not seven; > the window's 13 generations).
local RGEN_MOD = 100
local now = node_ms()
local gen = math.floor(now / GEN_MS)
local RGEN, OLDEST = tostring(gen % RGEN_MOD), gen - math.ceil(WINDOW_MS / GEN_MS)
-- Called once per update or more: locals, not global lookups.
local call, byte, sub, find, unpack_struct = redis.call, string.byte, string.sub, string.find, struct.unpack

-- Working state of this call, by user: a user's keys are the same in all its updates (the router derives
-- them from the user id), so the user alone names its entry and its records. ikeys, rkeys: the user's index
-- hash and records stem; entries; written (in order): the users whose entries are written.
local ikeys, rkeys, entries, fresh, written, order, blocked = {}, {}, {}, {}, {}, {}, {}
-- pushed: this call's new records by user; rewritten (in pushed_order): the users whose records are
-- stored again, those with new records and those found damaged.
local records, pushed, pushed_order, rewritten = {}, {}, {}, {}
local function load_entry(ik, user)
  local k = user
  if entries[k] == nil then
    local raw = call('HGET', ik, user)
    local e = parse_entry(raw)
    -- Absent, or removed (a tombstone "~ver|ms"); `ver` + 1 is the version it gets if it comes (see
    -- first_version). A member never seen, or whose tombstone was collected, has no request-id records
    -- young enough to count; a removed one may (rgen unknown).
    if e == nil then
      e = {absent = true, ver = first_version(ik, raw) - 1}
      if not raw then e.rgen = '' end
    end
    entries[k] = e
  end
  return k, entries[k]
end
-- Stored records, packed (what this release writes): the byte PACKED, the number of records (one byte),
-- then the records back to back, oldest first, each struct '>I6ddB' (ts: node ms, absolute, so records
-- move between generations as they are; the submitted value; the score answered; the id's byte length)
-- followed by the id: any bytes ('|', NUL, newlines), cut out by its length. Scores and values are
-- integers within ±(2^53 - 1), exact in a double. Records of older releases are text (`scan_records`),
-- read, and written again packed.
local PACKED, RECORD, HEAD_LEN = 1, '>I6ddB', 23
-- A member's stored request ids, as stored: its field in the generation its entry names (rgen), or when
-- that is unknown in every generation that can still hold records younger than WINDOW_MS. Parsed only
-- when needed (`parse_records`): most updates carry an id never seen, and a plain search of the stored
-- bytes for the id behind its length (how a record ends) proves that without parsing.
local function load_records(rk, user, rgen)
  local found = {}
  if rgen == '' then return {found = found} end
  local lo, hi = OLDEST, gen
  if rgen ~= nil then
    -- rgen is the generation mod RGEN_MOD: one generation of the window has that remainder.
    lo = gen - (gen - tonumber(rgen)) % RGEN_MOD
    hi = lo
  end
  for g = math.max(lo, OLDEST), hi do
    local key = rk .. ':' .. g
    local raw = call('HGET', key, user)
    if raw then found[#found + 1] = {key = key, g = g, raw = raw, packed = byte(raw, 1) == PACKED} end
  end
  return {found = found}
end

local function pack_record(rec)
  return struct.pack(RECORD, rec.ts, rec.value, rec.score, #rec.rid) .. rec.rid
end
-- The packed records of `raw`, appended to `list` ({ts, value, score, rid}), and whether all of it
-- parsed (what does not is dropped, never an error: an error would fail every update of the batch).
local function unpack_records(raw, list)
  local n, pos = string.byte(raw, 2) or 0, 3
  for _ = 1, n do
    if pos + HEAD_LEN - 1 > #raw then return false end
    local ts, v, s, len, at = struct.unpack(RECORD, raw, pos)
    if at + len - 1 > #raw then return false end
    table.insert(list, {ts = ts, value = v, score = s, rid = string.sub(raw, at, at + len - 1)})
    pos = at + len
  end
  return pos == #raw + 1
end
-- The packed form of the last `keep` records of packed `raw` that are younger than WINDOW_MS, as
-- (count, bytes), cut out as they are: what `parse_records` would keep, without parsing all of them (records
-- are oldest first, so the old ones lead). nil when `raw` does not hold what its count says.
local function packed_tail(raw, keep)
  local n, pos, len = byte(raw, 2) or 0, 3, #raw
  while n > 0 do
    if pos + HEAD_LEN - 1 > len then return nil end
    if n <= keep and unpack_struct('>I6', raw, pos) >= now - WINDOW_MS then break end
    pos = pos + HEAD_LEN + byte(raw, pos + HEAD_LEN - 1)
    n = n - 1
  end
  if pos > len + 1 then return nil end
  return n, sub(raw, pos)
end

-- Stored records of older releases, text: 'ts|value|score|len|rid' back to back, ts in ms since the start
-- of the generation of the hash holding them; the id is cut out by its length.
local HEAD = '^(-?%d+)|(-?%d+)|(-?%d+)|(%d+)|()'
-- The records of `raw` from `pos` on, appended to `list` ({ts, value, score, rid, last}: ts as stored,
-- last where the record ends in `raw`) while they parse. Returns where parsing stopped (#raw + 1 once all
-- of it parsed) and, when a record there has a head but is longer than what is left, where its id begins.
local function parse_from(raw, pos, list)
  while pos <= #raw do
    local ts, v, s, n, at = string.match(raw, HEAD, pos)
    if not at then return pos, nil end
    local last = at + tonumber(n) - 1
    if last > #raw then return pos, at end
    table.insert(list, {ts = tonumber(ts), value = tonumber(v), score = tonumber(s),
                        rid = string.sub(raw, at, last), last = last})
    pos = last + 1
  end
  return pos, nil
end
-- Every text record of `raw` that can be trusted, and whether that is all of `raw`. What does not parse
-- is dropped, and rewritten clean by the caller. Ids with a NUL were once written cut at the NUL while
-- their length counted every byte: such a record swallows the head of the next one (or runs past the
-- end), and parsing goes astray right behind it. Its own id is lost then, but the records behind it are
-- found where its id should have been: from the first place inside it from which all the rest parses.
local function scan_records(raw)
  local list = {}
  local stop, overrun = parse_from(raw, 1, list)
  if stop > #raw then return list, true end
  -- The damaged record's id: the one running past the end, else the last one parsed (dropped if the
  -- rest is found inside it).
  local from, to, suspect = overrun, #raw, nil
  if not overrun and #list > 0 then
    suspect = list[#list]
    from, to = suspect.last - #suspect.rid + 1, suspect.last
  end
  if not from then return list, false end
  for q = from, to do
    local rest = {}
    if parse_from(raw, q, rest) > #raw then
      if suspect then list[#list] = nil end
      for _, rec in ipairs(rest) do table.insert(list, rec) end
      break
    end
  end
  return list, false
end
-- The records of `found` younger than WINDOW_MS, oldest first, the last DEPTH ({ts: node ms, value,
-- score, rid}); and whether any stored bytes did not parse.
local function parse_records(found)
  local list, damaged = {}, false
  for _, f in ipairs(found) do
    local recs, clean = {}, true
    if f.packed then
      clean = unpack_records(f.raw, recs)
    else
      recs, clean = scan_records(f.raw)
      for _, rec in ipairs(recs) do rec.ts = f.g * GEN_MS + rec.ts end
    end
    damaged = damaged or not clean
    for _, rec in ipairs(recs) do
      if rec.ts >= now - WINDOW_MS then table.insert(list, rec) end
    end
  end
  while #list > DEPTH do table.remove(list, 1) end
  return list, damaged
end
-- `value` stored as `user`'s records in generation hash `key`. A hash gets its expiry (WINDOW_MS after its
-- generation ends: the same whenever it is set) with its first field: a new field in a hash of one field is
-- that (empty hashes do not exist), and a hash that was there has it (releases before set it with every new
-- field; nothing else writes these hashes). One write per hash and generation, not one per new field (a member
-- whose records move from an older generation is one). `expiring`: the hashes this call looked at already.
local function store_records(key, user, value, expiring)
  if call('HSET', key, user, value) == 1 and not expiring[key] then
    expiring[key] = true
    if call('HLEN', key) == 1 then call('PEXPIREAT', key, (gen + 1) * GEN_MS + WINDOW_MS) end
  end
end
local function rewrite_records(slot)
  if not rewritten[slot] then rewritten[slot] = true; pushed_order[#pushed_order + 1] = slot end
end
local function find_record(rk, user, rid, rgen)
  local slot = user
  if records[slot] == nil then records[slot] = load_records(rk, user, rgen) end
  -- Newest first: records pushed by this call sit at the end of `pushed`.
  local mine = pushed[slot]
  if mine then
    for j = #mine, 1, -1 do if mine[j].rid == rid then return mine[j] end end
  end
  local stored = records[slot]
  if stored.list == nil then
    local seen = false
    for _, f in ipairs(stored.found) do
      local needle = f.packed and string.char(#rid) .. rid or '|' .. #rid .. '|' .. rid
      if find(f.raw, needle, 1, true) then seen = true; break end
    end
    if not seen then return nil end
    local damaged
    stored.list, damaged = parse_records(stored.found)
    if damaged then rewrite_records(slot) end
  end
  for _, rec in ipairs(stored.list) do
    if rec.rid == rid then return rec end
  end
  return nil
end

-- An entry of this release with no crossing pending: score, ver, rgen (its other fields are '@', '', '').
local PLAIN = '^(-?%d+)|(%d+)|@|||(%d*)$'
-- 'check' mode when no user appears twice (the usual batch): each update on its own, so none of the
-- bookkeeping an apply needs (new records, entries to write, crossings decided again) is kept. The same
-- answers as the general loop below gives then: the intents, or the refusals.
local function check_distinct()
  local seen, n = {}, (#ARGV - first + 1) / 3
  local out, refused = {'ok'}, {'abort'}
  for i = 1, n do
    local a = first + (i - 1) * 3
    local user, value, rid = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    if seen[user] then return nil end  -- nothing written: the general loop takes the call
    seen[user] = true
    local ik = KEYS[2 * i - 1]
    local raw = call('HGET', ik, user)
    -- The entry's score and rgen, nil for none: as load_entry, no entry and no tombstone have no records, a
    -- tombstone names no generation (nil). The usual entry is read without building it.
    local score, rgen, e = nil, nil, nil
    if not raw then
      rgen = ''
    else
      local s, _, g = string.match(raw, PLAIN)
      if s then
        score, rgen = tonumber(s), g
      else
        e = parse_entry(raw)
        if e then score, rgen = e.score, e.rgen end
      end
    end
    if e and e.from ~= '' then
      out[#out + 1] = {'intent', user, e.score, e.ver, e.home, e.from, e.to}
    else
      local rec = nil
      if rid ~= '' then
        if rgen == nil then
          rec = find_record(KEYS[2 * i], user, rid, rgen)
        elseif rgen ~= '' then
          -- The usual case, one generation: the stored bytes searched as they are; only a hit (a retry, or an id
          -- whose bytes occur in another) takes find_record's parse.
          local g = gen - (gen - tonumber(rgen)) % RGEN_MOD
          local stored = g >= OLDEST and call('HGET', KEYS[2 * i] .. ':' .. g, user)
          if stored then
            local needle = byte(stored, 1) == PACKED and string.char(#rid) .. rid or '|' .. #rid .. '|' .. rid
            if find(stored, needle, 1, true) then rec = find_record(KEYS[2 * i], user, rid, rgen) end
          end
        end
      end
      local v = tonumber(value)
      local new = v
      if score and op == 1 then new = score + v
      elseif score and op == 2 and ((desc and v <= score) or (not desc and v >= score)) then new = score end
      if rec and rec.value ~= v then
        refused[#refused + 1] = {i, 'conflict'}
      elseif not rec and math.abs(new) > MAX_SCORE then
        refused[#refused + 1] = {i, 'overflow'}
      end
    end
  end
  if #refused > 1 then return refused end
  return out
end
-- 'apply' or 'each' mode in the usual call: every user once, every entry absent (never seen) or PLAIN, every
-- request id new (its bytes found nowhere in the member's packed records), nothing refused. Decided in one pass
-- of reads without the general loop's bookkeeping by user, then written. nil, with nothing written, as soon as an
-- update is of another kind: the general loop below then takes the whole call, so the answers and writes are the
-- general loop's in every case.
local function apply_distinct()
  local n, seen = (#ARGV - first + 1) / 3, {}
  local out, o, writes, match, format, char, pack = {'ok'}, 1, {}, string.match, string.format, string.char, struct.pack
  for i = 1, n do
    local a = first + (i - 1) * 3
    local user, value, rid = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    if seen[user] then return nil end
    seen[user] = true
    local ik = KEYS[2 * i - 1]
    local raw = call('HGET', ik, user)
    local score, ver, rgen
    if raw then
      score, ver, rgen = match(raw, PLAIN)
      if not score then return nil end
      score, ver = tonumber(score), tonumber(ver)
    else
      ver, rgen = first_version(ik, nil) - 1, ''
    end
    local v = tonumber(value)
    local new, applied = v, 1
    if raw then
      if op == 1 then new = score + v
      elseif op == 2 and ((desc and v <= score) or (not desc and v >= score)) then new, applied = score, 0 end
    end
    if math.abs(new) > MAX_SCORE then return nil end
    -- The new records (as the general loop stores one new record: the stored ones' tail, cut as stored), and the
    -- field they leave when they move from an older generation.
    local rkey, records, left = false, false, false
    if rid ~= '' then
      local count, tail = 0, ''
      if rgen == RGEN then rkey = KEYS[2 * i] .. ':' .. gen end  -- the usual generation: where they stay
      if rgen ~= '' then
        local g = gen - (gen - tonumber(rgen)) % RGEN_MOD
        local stored = g >= OLDEST and call('HGET', rkey or KEYS[2 * i] .. ':' .. g, user)
        if stored then
          if byte(stored, 1) ~= PACKED or find(stored, char(#rid) .. rid, 1, true) then return nil end
          count, tail = packed_tail(stored, DEPTH - 1)
          if not count then return nil end
          if g ~= gen then left = KEYS[2 * i] .. ':' .. g end
        end
      end
      rkey = rkey or KEYS[2 * i] .. ':' .. gen
      records = char(PACKED, count + 1) .. tail .. pack(RECORD, now, v, new, #rid) .. rid
    end
    local from = ''
    if applied == 1 then
      ver = ver + 1
      if raw and cell(new) ~= cell(score) then from = from_score(score) end
    end
    -- The entry is written when the update applies, or when its records move to another generation (a kept
    -- score in best mode still moves them: the entry must say where); format_entry's form.
    local entry = false
    if records then rgen, entry = RGEN, rgen ~= RGEN end
    if applied == 1 or entry then
      if from == '' then entry = format('%d|%d|@|||', new, ver) .. rgen
      else entry = format('%d|%d|@|', new, ver) .. from .. '|@|' .. rgen end
    end
    local w = #writes
    writes[w + 1], writes[w + 2], writes[w + 3], writes[w + 4], writes[w + 5], writes[w + 6], writes[w + 7] =
      user, ik, entry, applied == 1, rkey, records, left
    if from == '' then  -- entry {new, ver, '@', '', ''}
      out[o + 1], out[o + 2], out[o + 3] = raw and (applied == 1 and 'upd' or 'kept') or 'new', new, ver
      o = o + 3
    else
      o = o + 1
      out[o] = {'upd', new, ver, applied, '@', from, '@', new}
    end
  end
  local marks, expiring = {}, {}
  for w = 1, #writes, 7 do
    local user, ik, entry, marked, rkey, records, left = unpack(writes, w, w + 6)
    if records then
      if left then call('HDEL', left, user) end
      store_records(rkey, user, records, expiring)
    end
    if entry then call('HSET', ik, user, entry) end
    if marked then
      marks[#marks + 1] = now
      marks[#marks + 1] = user
    end
  end
  call_bulk('ZADD', KEYS[#KEYS], marks)
  return out
end
if mode == 'check' then
  local answer = check_distinct()
  if answer then return answer end
else
  local answer = apply_distinct()
  if answer then return answer end
end

local results, aborts = {'ok'}, {'abort'}
local function refuse(i, kind)
  if mode == 'each' then table.insert(results, {'refused', kind}) else table.insert(aborts, {i, kind}) end
end
for i = 1, (#ARGV - first + 1) / 3 do
  local a = first + (i - 1) * 3
  local user, value, rid = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local ik, rk = KEYS[2 * i - 1], KEYS[2 * i]
  ikeys[user], rkeys[user] = ik, rk
  local k, e = load_entry(ik, user)
  local rec = nil
  if rid ~= '' then rec = find_record(rk, user, rid, e.rgen) end
  if blocked[k] or (not e.absent and e.from ~= '' and not fresh[k]) then
    blocked[k] = true
    table.insert(results, {'intent', user, e.score, e.ver, e.home, e.from, e.to})
  elseif rec and rec.value ~= tonumber(value) then
    refuse(i, 'conflict')
  elseif rec then
    if mode == 'check' then
    elseif e.absent then
      table.insert(results, {'dup', rec.score, 0, 0, '', '', '', 0})
    else
      table.insert(results, {'dup', rec.score, e.ver, 0, e.home, e.from, e.to, e.score})
    end
  else
    local v = tonumber(value)
    local new, applied = v, 1
    if not e.absent then
      if op == 1 then new = e.score + v
      elseif op == 2 then
        if (desc and v <= e.score) or (not desc and v >= e.score) then new, applied = e.score, 0 end
      end
    end
    if math.abs(new) > MAX_SCORE then
      refuse(i, 'overflow')
    else
      local kind = 'upd'
      if applied == 1 then
        if e.absent then
          kind = 'new'
          e = {score = new, ver = e.ver + 1, home = '@', from = '', to = '', rgen = e.rgen}
          entries[k] = e
        else
          if fresh[k] then
            -- A crossing recorded earlier in this call has not touched any shard yet: decide it again.
            if cell(new) == cell(fresh[k]) then e.from, e.to, fresh[k] = '', '', nil end
          elseif cell(new) ~= cell(e.score) then
            e.from, e.to, fresh[k] = from_score(e.score), '@', e.score
          end
          -- Entries of older releases named the member's shard: from now on it is derived.
          e.home = '@'
          e.score, e.ver = new, e.ver + 1
        end
        if not written[k] then written[k] = true; order[#order + 1] = user end
      end
      if rid ~= '' then
        local slot = user
        local mine = pushed[slot]
        if mine == nil then mine = {}; pushed[slot] = mine end
        rewrite_records(slot)
        mine[#mine + 1] = {ts = now, value = v, score = new, rid = rid}
      end
      if mode == 'check' then
      elseif e.from == '' then
        local r = #results  -- entry {new, ver, '@', '', ''}
        results[r + 1], results[r + 2], results[r + 3] = applied == 1 and kind or 'kept', new, e.ver
      else
        results[#results + 1] = {kind, new, e.ver, applied, e.home, e.from, e.to, e.score}
      end
    end
  end
end

if #aborts > 1 then return aborts end
if mode == 'check' then return results end
-- Each member's records move to the current generation, which its entry then names: older
-- generations' hashes only hold members idle since, and expire WINDOW_MS after their generation ended.
local rewrite, expiring = {}, {}
for _, user in ipairs(pushed_order) do
  local rk, slot, k = rkeys[user], user, user
  local stored, mine, key = records[slot], pushed[slot] or {}, rk .. ':' .. gen
  local found, value = stored.found, nil
  local from = math.max(1, #mine - DEPTH + 1)
  if stored.list == nil and #found <= 1 then
    -- The usual case: one packed field (of any generation: times are absolute), unparsed; keep its tail as
    -- stored.
    local n, tail = 0, ''
    if #found == 1 and found[1].packed then n, tail = packed_tail(found[1].raw, DEPTH - (#mine - from + 1))
    elseif #found == 1 then n = nil end
    if n and #mine == 1 then  -- one new record: one concatenation
      value = string.char(PACKED, n + 1) .. tail .. pack_record(mine[1])
    elseif n then
      local parts = {string.char(PACKED, n + #mine - from + 1), tail}
      for j = from, #mine do table.insert(parts, pack_record(mine[j])) end
      value = table.concat(parts)
    end
  end
  if value == nil then
    stored.list = stored.list or parse_records(found)
    local all = {}
    for _, rec in ipairs(stored.list) do table.insert(all, rec) end
    for _, rec in ipairs(mine) do table.insert(all, rec) end
    local parts = {string.char(PACKED, math.min(#all, DEPTH))}
    for j = math.max(1, #all - DEPTH + 1), #all do table.insert(parts, pack_record(all[j])) end
    value = table.concat(parts)
  end
  for _, f in ipairs(found) do
    if f.key ~= key then redis.call('HDEL', f.key, user) end
  end
  if #value > 2 then
    store_records(key, user, value, expiring)
  else  -- records found damaged, nothing left of them
    redis.call('HDEL', key, user)
  end
  local e = entries[k]
  -- A removed member's tombstone names no generation (every one is looked in): it stays as it is.
  if not e.absent and e.rgen ~= RGEN then
    e.rgen = RGEN
    -- An update that changed nothing (best mode) still moved the records: its entry must say where.
    if not written[k] then rewrite[#rewrite + 1] = user end
  end
end
local marks = {}
for _, user in ipairs(order) do
  call('HSET', ikeys[user], user, format_entry(entries[user]))
  marks[#marks + 1] = now
  marks[#marks + 1] = user
end
call_bulk('ZADD', KEYS[#KEYS], marks)
for _, user in ipairs(rewrite) do call('HSET', ikeys[user], user, format_entry(entries[user])) end
return results
