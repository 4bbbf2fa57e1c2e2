-- Compare-and-set of one tenant's policy state: applied only to the state it was computed from.
-- KEYS[1] the states hash
-- ARGV[1] the tenant, ARGV[2] the expected JSON ('' when the tenant has none), ARGV[3] the new JSON
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
