-- Stores an uploaded policy bundle once: versions are immutable.
-- KEYS[1] the bundle key, KEYS[2] the tenant's bundle index
-- ARGV[1] the bundle JSON, ARGV[2] uploaded_at (ms), ARGV[3] the version
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
