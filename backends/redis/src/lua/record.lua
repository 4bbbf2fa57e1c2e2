-- Appends an audit event that parks nothing (an allow or deny answer, a policy change) and
-- names its tenant among the known ones, as park.lua does: the audit trimmer walks that set,
-- so a tenant whose requests are only ever allowed or denied has its audit trimmed too.
-- KEYS: 1 audit stream  2 tenants
-- ARGV: 1 audit event JSON  2 audit max length  3 tenant
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return false
