-- Compare-and-set of one tenant's policy state: applied only to the state it was computed from,
-- and only if the versions it makes active and candidate are stored (an upload's prune may have
-- deleted one since it was checked).
-- KEYS[1] the states hash, KEYS[2] its change counter (bumped with every change: an idle
-- reload poll reads only that), KEYS[3..] the bundle keys the new state newly names as active
-- or candidate
-- ARGV[1] the tenant, ARGV[2] the expected JSON ('' when the tenant has none), ARGV[3] the new JSON
-- Returns 1 when applied, 0 when the state moved, -n when the n-th bundle key is missing.
-- The state moved when its generation did (every change counts it up), not when its bytes
-- differ: a state written by hand or by another version (other spacing, key order or fields)
-- never matched the JSON this version writes, and every change was refused for good. No state
-- ('') is generation 0, as is a written one equal to it: that one too was refused for good.
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local function generation(json)
  if json == '' then return 0 end
  local ok, state = pcall(cjson.decode, json)
  if ok and type(state) == 'table' and type(state['generation']) == 'number' then
    return state['generation']
  end
  return nil
end
if current ~= ARGV[2] then
  local now, expected = generation(current), generation(ARGV[2])
  if now == nil or now ~= expected then return 0 end
end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return 2 - i
  end
end
-- The counter first: an INCR refused (a damaged counter) after the HSET answered an error
-- for a change that had been made. The HSET cannot fail here (the HGET above read the hash).
redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
