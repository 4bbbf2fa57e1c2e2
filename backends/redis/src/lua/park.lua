-- Writes a record with its indexes unless its key exists: submit, import and adoption.
-- KEYS: 1 record  2 status index  3 deadlines  4 retention  5 tenants  6 submitted-ms sums
--       7 audit stream  8 shadow (the pending copy that outlives the record key)
-- ARGV: 1 record JSON  2 key expiry (epoch ms, PXAT)  3 index member  4 status  5 deadline member
--       6 expires (ms)  7 retention member  8 retention end (ms)  9 tenant  10 submitted (ms)
--       11 audit event JSON  12 audit max length
--       13 adopt: when non-empty, the exact current value that may be replaced
--       14 shadow expiry (epoch ms, PXAT), for a pending record
-- Returns nil when written, else the existing value (a lapsed pending one from its shadow);
-- for an adoption whose value lapsed meanwhile, the empty string. A key of another type reads
-- as '' (unreadable, never overwritten). Runs after values.lua.
local existing = read_value(KEYS[1]) or read_value(KEYS[8])
if ARGV[13] ~= '' then
  -- Adoption replaces exactly the value it read: one that lapsed meanwhile (an expiry, in
  -- ADR v1) stays lapsed, never parked again with a deadline of its own.
  if existing ~= ARGV[13] then return existing or '' end
elseif existing then
  return existing
end
-- Everything that can refuse a write is checked first: a record with no submit event or
-- outside the pending sum would be a decidable approval no reader, metric or retry accounts for.
local pending = ARGV[4] == 'pending'
if not valid_px(ARGV[2]) or (pending and not valid_px(ARGV[14])) then
  return redis.error_reply('invalid expiry: ' .. ARGV[2] .. ' ms, shadow ' .. ARGV[14] .. ' ms')
end
if pending then
  local refused = wrong_type({KEYS[6], 'hash'}) or not_a_sum(KEYS[6], ARGV[9])
  if refused then return refused end
  -- The sum is of epoch milliseconds: past 2^63 HINCRBY fails (about 5 million pending in
  -- one tenant). Compared as doubles, with a margin far above their rounding there.
  local sum = tonumber(redis.call('HGET', KEYS[6], ARGV[9]) or '0')
  if sum + tonumber(ARGV[10]) > 9.2e18 then
    return redis.error_reply('pending sum full for tenant ' .. ARGV[9])
  end
end
local refused = wrong_type({KEYS[2], 'zset', pending and KEYS[3] or KEYS[4], 'zset', KEYS[5], 'set'})
if refused then return refused end
-- First: the one write left that can fail (a stream someone replaced with another type).
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[12], '*', 'e', ARGV[11])
local key_expires = ARGV[2]
if not pending then
  -- A settled record's retention end may be near (an import keeps its age): at least a second
  -- ahead of Redis' own clock, or a clock ahead of the instance's would drop the key at once
  -- while its index entry stays.
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + 1000
  if tonumber(key_expires) < floor then key_expires = string.format('%d', floor) end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', key_expires)
local listed = redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('SADD', KEYS[5], ARGV[9])
if pending then
  -- The sum follows the index: an adoption of a record already listed (the ADR's service
  -- wrote it again) adds nothing, or the sum counted it twice and settling took it once.
  if listed == 1 then redis.call('HINCRBY', KEYS[6], ARGV[9], ARGV[10]) end
  redis.call('SET', KEYS[8], ARGV[1], 'PXAT', ARGV[14])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
else
  -- A pending copy left from an earlier life of this id would outlive this settled record
  -- and be swept as a second, phantom expiry.
  redis.call('DEL', KEYS[8])
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[7])
end
return false
