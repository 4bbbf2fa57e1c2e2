-- Stores an uploaded policy bundle once (versions are immutable) with its summary, then keeps
-- the tenant within its count: besides the versions its policy state names, at most ARGV[6]
-- (the new one among them); the oldest of those others are deleted, never the new one.
-- KEYS[1] the bundle key, KEYS[2] the tenant's bundle index, KEYS[3] its summaries,
-- KEYS[4] the policy states hash
-- ARGV[1] the bundle JSON, ARGV[2] uploaded_at (ms), ARGV[3] the version, ARGV[4] the summary
-- JSON, ARGV[5] the tenant, ARGV[6] versions kept besides the named ones, ARGV[7] the prefix
-- of the tenant's bundle keys
-- Runs after values.lua.
-- Returns {1, pruned versions...} when stored, {0} when the version was there (its place in
-- the upload order refreshed).
-- Checked first: a bundle stored before a refused ZADD was left out of the index, and every
-- retry found it stored.
local refused = wrong_type({KEYS[1], 'string', KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'hash'})
if refused then return refused end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  -- Pushed again: as recent as a new upload for what is kept (its first upload's facts
  -- stand), so the next upload's prune does not delete the version a pipeline just pushed
  -- and is about to activate.
  redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[3])
  return {0}
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])

local keep = tonumber(ARGV[6])
local stored = redis.call('ZCARD', KEYS[2])
if stored <= keep then
  return {1}
end
local named = {}
local state = redis.call('HGET', KEYS[4], ARGV[5])
if state and state ~= '' then
  local ok, decoded = pcall(cjson.decode, state)
  -- A state nothing can read names who knows what: delete nothing.
  if not ok or type(decoded) ~= 'table' then
    return {1}
  end
  for _, field in ipairs({'active', 'candidate'}) do
    local version = decoded[field]
    if type(version) == 'string' then named[version] = true end
  end
  if type(decoded.history) == 'table' then
    for _, version in ipairs(decoded.history) do
      if type(version) == 'string' then named[version] = true end
    end
  end
end
-- The count is of the others: named versions that are stored do not use it up.
local named_stored = 0
for version in pairs(named) do
  if redis.call('ZSCORE', KEYS[2], version) then named_stored = named_stored + 1 end
end
named[ARGV[3]] = true
local excess = stored - named_stored - keep
if excess <= 0 then
  return {1}
end
-- Bounded work per upload: a store that grew before it had a count shrinks over a few.
excess = math.min(excess, 100)
local result = {1}
local oldest = redis.call('ZRANGE', KEYS[2], 0, excess + named_stored + 1)
for _, version in ipairs(oldest) do
  if excess <= 0 then break end
  if not named[version] then
    redis.call('DEL', ARGV[7] .. version)
    redis.call('ZREM', KEYS[2], version)
    redis.call('HDEL', KEYS[3], version)
    table.insert(result, version)
    excess = excess - 1
  end
end
return result
