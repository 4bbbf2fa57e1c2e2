-- Appends an audit event that parks nothing (an allow or deny answer, a policy change) and
-- names its tenant among the known ones, as park.lua does: the audit trimmer walks that set,
-- so a tenant whose requests are only ever allowed or denied has its audit trimmed too.
-- KEYS: 1 audit stream  2 tenants
-- ARGV: 1 audit event JSON  2 audit max length  3 tenant
-- Runs after values.lua.
-- Checked first: an event appended before a refused SADD was appended again by each retry.
local refused = wrong_type({KEYS[1], 'stream', KEYS[2], 'set'})
if refused then return refused end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return false
