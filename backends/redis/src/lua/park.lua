-- Writes a record with its indexes unless its key exists: submit, import and adoption.
-- KEYS: 1 record  2 status index  3 deadlines  4 retention  5 tenants  6 submitted-ms sums
--       7 audit stream  8 shadow (the pending copy that outlives the record key)
-- ARGV: 1 record JSON  2 key TTL (ms)  3 index member  4 status  5 deadline member
--       6 expires (ms)  7 retention member  8 retention end (ms)  9 tenant  10 submitted (ms)
--       11 audit event JSON  12 audit max length
--       13 adopt: when non-empty, the exact current value that may be replaced
--       14 shadow TTL (ms), for a pending record
-- Returns nil when written, else the existing value (a lapsed pending one from its shadow);
-- for an adoption whose value lapsed meanwhile, the empty string.
local existing = redis.call('GET', KEYS[1]) or redis.call('GET', KEYS[8])
if ARGV[13] ~= '' then
  -- Adoption replaces exactly the value it read: one that lapsed meanwhile (an expiry, in
  -- ADR v1) stays lapsed, never parked again with a deadline of its own.
  if existing ~= ARGV[13] then return existing or '' end
elseif existing then
  return existing
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('SADD', KEYS[5], ARGV[9])
if ARGV[4] == 'pending' then
  redis.call('SET', KEYS[8], ARGV[1], 'PX', ARGV[14])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('HINCRBY', KEYS[6], ARGV[9], ARGV[10])
else
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[7])
end
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[12], '*', 'e', ARGV[11])
return false
