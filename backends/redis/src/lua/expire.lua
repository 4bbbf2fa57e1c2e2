-- The sweeper's step for one due deadline entry. KEYS and ARGV[1..10] as in common.lua, then
--   ARGV[11] the deadline member, ARGV[12] its index member.
-- Returns the expired record if this call recorded the expiry, UNREADABLE (a status) for a
-- value it cannot settle, else nil (already settled, or not yet due).
-- Every instance's sweeper may run this for the same entry at once: the record's status makes
-- the second call a no-op, so each expiry is recorded exactly once.
-- Every path below may take the approval out of the sums: a damaged sum refuses the call
-- before anything is written (`not_a_sum`).
local refused = wrong_type({KEYS[2], 'zset', KEYS[5], 'zset', KEYS[7], 'hash'})
  or not_a_sum(KEYS[7], ARGV[4])
if refused then return refused end

-- Takes the entry out of the deadlines, and the approval out of the pending index and sums.
local function unlist()
  if redis.call('ZREM', KEYS[2], ARGV[12]) == 1 then
    local submitted_ms = tonumber(string.sub(ARGV[12], 1, 15))
    redis.call('HINCRBY', KEYS[7], ARGV[4], -submitted_ms)
  end
  redis.call('ZREM', KEYS[5], ARGV[11])
end

local raw = current_record()
if not raw then
  -- Gone past the expired-retention (every sweeper was down that long): nothing to keep, only
  -- indexes to mend.
  unlist()
  return false
end
-- An id missing here failed the whole sweep at the concatenation in index_member, pass
-- after pass: only a settleable record is read further.
local rec = settleable(raw)
local readable = rec ~= nil
if readable and index_member(rec) ~= ARGV[12] then
  -- An earlier approval's entry under the same id: its record and shadow lapsed before any
  -- sweep, and the id was parked again. That approval is gone; this one has its own entry.
  unlist()
  return false
end
if readable and rec['status'] ~= 'pending' then
  -- Settled here, or decided by the ADR v1 service and adopted: then the pending entry and
  -- its share of the sum are still there, and go now. So does a pending shadow left beside a
  -- record settled by something else (the v1 service, a restore): once that record lapsed,
  -- reads would find the shadow and call the approval expired, and a decision would record a
  -- second ending.
  unlist()
  if redis.call('GET', KEYS[1]) == raw then redis.call('DEL', KEYS[9]) end
  return false
end
if readable and tonumber(ARGV[1]) < rec['expires_ms'] then return false end
if not readable or string.sub(raw, 1, #ARGV[2]) ~= ARGV[2] then
  -- A value this version cannot settle (corrupt, or written over by something else): it
  -- would be the first due entry of every sweep, and fail it, for as long as its shadow lives.
  -- Unlisted instead; the value stays, untouched, for a person to look at.
  unlist()
  return redis.status_reply(UNREADABLE)
end
return expire(raw, rec)
