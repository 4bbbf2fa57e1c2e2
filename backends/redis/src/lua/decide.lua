-- A reviewer's decision. KEYS and ARGV[1..10] as in common.lua, then
--   ARGV[11] decider subject, ARGV[12] decided head, ARGV[13] decided retention (ms),
--   ARGV[14] target status, ARGV[15] audit event JSON.
-- Returns {outcome, record}; outcome one of won, not_found, expired, expired_now (this call
-- recorded the expiry), decided, self, foreign (adopt it, then ask again), unreadable.
-- Checks in the contract's order: not_found, expired, already_decided, self_approval.
local raw = current_record()
if not raw then return {'not_found'} end
local rec = settleable(raw)
if not rec then
  local decoded, value = pcall(cjson.decode, raw)
  if decoded and type(value) == 'table' and value['expires_ms'] == nil then
    return {'foreign'}
  end
  return {'unreadable'}
end
if rec['status'] == 'expired' then return {'expired', raw} end
if rec['status'] ~= 'pending' then return {'decided', raw} end
-- settle() keeps the record's bytes after its head: a pending record must start with it.
if string.sub(raw, 1, #ARGV[2]) ~= ARGV[2] then return {'unreadable'} end
-- The instance read its clock before the call waited for a connection and for Redis: the
-- deadline is checked against the later of that and Redis' own clock, so a decision that
-- reaches Redis after the deadline is never taken.
local time = redis.call('TIME')
local redis_now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if math.max(tonumber(ARGV[1]), redis_now) >= rec['expires_ms'] then
  -- Past the deadline, not yet swept: record the expiry now, so it happens exactly once.
  return {'expired_now', expire(raw, rec)}
end
if rec['submitted_by'] == ARGV[11] then return {'self'} end
return {'won', settle(raw, rec, ARGV[14], ARGV[12], ARGV[13], KEYS[3], ARGV[15])}
