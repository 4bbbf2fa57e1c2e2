-- The sweeper's step for one due deadline entry. KEYS and ARGV[1..10] as in common.lua, then
--   ARGV[11] the deadline member, ARGV[12] its index member.
-- Returns the expired record if this call recorded the expiry, else nil (already settled,
-- or not yet due).
-- Every instance's sweeper may run this for the same entry at once: the record's status makes
-- the second call a no-op, so each expiry is recorded exactly once.
local raw = current_record()
if not raw then
  -- Gone past the expired-retention (every sweeper was down that long): nothing to keep, only
  -- indexes to mend.
  if redis.call('ZREM', KEYS[2], ARGV[12]) == 1 then
    local submitted_ms = tonumber(string.sub(ARGV[12], 1, 15))
    redis.call('HINCRBY', KEYS[7], ARGV[4], -submitted_ms)
  end
  redis.call('ZREM', KEYS[5], ARGV[11])
  return false
end
local rec = cjson.decode(raw)
if rec['status'] ~= 'pending' then
  redis.call('ZREM', KEYS[5], ARGV[11])
  return false
end
if tonumber(ARGV[1]) < rec['expires_ms'] then return false end
return expire(raw, rec)
