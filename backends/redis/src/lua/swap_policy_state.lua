-- Compare-and-set of one tenant's policy state: applied only to the state it was computed from,
-- and only if the versions it makes active and candidate are stored (an upload's prune may have
-- deleted one since it was checked).
-- KEYS[1] the states hash, KEYS[2] its change counter (bumped with every change: an idle
-- reload poll reads only that), KEYS[3..] the bundle keys the new state newly names as active
-- or candidate
-- ARGV[1] the tenant, ARGV[2] the expected JSON ('' when the tenant has none), ARGV[3] the new JSON
-- Returns 1 when applied, 0 when the state moved, -n when the n-th bundle key is missing.
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then
  return 0
end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return 2 - i
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('INCR', KEYS[2])
return 1
