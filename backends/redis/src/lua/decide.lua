-- A reviewer's decision. KEYS and ARGV[1..10] as in common.lua, then
--   ARGV[11] decider subject, ARGV[12] decided head, ARGV[13] decided retention (ms),
--   ARGV[14] target status, ARGV[15] audit event JSON.
-- Returns {outcome, record}; outcome one of won, not_found, expired, expired_now (this call
-- recorded the expiry), decided, self, foreign.
-- Checks in the contract's order: not_found, expired, already_decided, self_approval.
local raw = current_record()
if not raw then return {'not_found'} end
local rec = cjson.decode(raw)
if rec['expires_ms'] == nil then return {'foreign'} end
if rec['status'] == 'expired' then return {'expired', raw} end
if rec['status'] ~= 'pending' then return {'decided', raw} end
if tonumber(ARGV[1]) >= rec['expires_ms'] then
  -- Past the deadline, not yet swept: record the expiry now, so it happens exactly once.
  return {'expired_now', expire(raw, rec)}
end
if rec['submitted_by'] == ARGV[11] then return {'self'} end
return {'won', settle(raw, rec, ARGV[14], ARGV[12], ARGV[13], KEYS[3], ARGV[15])}
