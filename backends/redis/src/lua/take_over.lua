-- A record another writer decided in place: the ADR v1 service, still running beside this one,
-- rewrites `status` (and its decider) of a record this backend parked or adopted, and nothing
-- else. It is rewritten in this backend's form with what a decision here does: the indexes,
-- the sums, the audit event, the wake-up. Until then it was in no list, its agent's long-poll
-- was not woken, and the audit never had the decision.
-- KEYS and ARGV[1..10] as in common.lua, then
--   ARGV[11] the value as read, ARGV[12] the decided record in this backend's form,
--   ARGV[13] decided retention (ms), ARGV[14] its status, ARGV[15] the audit event JSON.
-- Returns the new record, or false when the value changed since it was read (another
-- instance took it over first, or the other writer wrote again) or the approval is no longer
-- pending here: nothing is written then.
local refused = wrong_type({KEYS[1], 'string'})
if refused then return refused end
if redis.call('GET', KEYS[1]) ~= ARGV[11] then return false end
local rec = settleable(ARGV[12])
if not rec then return redis.error_reply('take over: not a record: ' .. KEYS[1]) end
-- Still pending here: a record this service settled first (v1 overwrote it in a race) keeps
-- its one ending, and the sweeper unlists one it met decided at its deadline.
if redis.call('ZSCORE', KEYS[2], index_member(rec)) == false then return false end
return settle_as(ARGV[12], rec, ARGV[14], ARGV[13], KEYS[3], ARGV[15])
