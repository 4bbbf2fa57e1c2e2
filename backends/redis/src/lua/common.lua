-- Shared by decide.lua and expire.lua. Both declare the same KEYS:
--   1 record  2 pending index  3 target index (accepted/rejected)  4 expired index
--   5 deadlines  6 retention  7 submitted-ms sums  8 audit stream
-- and take ARGV[1] = now (ms), ARGV[2] = the pending head, ARGV[3] = expired retention (ms),
-- ARGV[4] = tenant, ARGV[5] = channel, ARGV[6] = the channel message, ARGV[7] = audit max length.

local function index_member(rec)
  return string.format('%015d', rec['submitted_ms']) .. ':' .. rec['id']
end

local function deadline_member(rec)
  return ARGV[4] .. ':' .. string.format('%d', rec['submitted_ms']) .. ':' .. rec['id']
end

-- Moves a pending record to `status` in one step: record, indexes, sums, audit, wake-up.
local function settle(raw, rec, status, head, ttl_ms, target_index, audit_json)
  local pending_head = ARGV[2]
  if string.sub(raw, 1, #pending_head) ~= pending_head then
    return redis.error_reply('corrupt record: pending head not found in ' .. KEYS[1])
  end
  local member = index_member(rec)
  local settled = head .. string.sub(raw, #pending_head + 1)
  local now = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], settled, 'PX', ttl_ms)
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', target_index, 0, member)
  redis.call('ZREM', KEYS[5], deadline_member(rec))
  redis.call('ZADD', KEYS[6], now + ttl_ms, ARGV[4] .. ':' .. status .. ':' .. member)
  redis.call('HINCRBY', KEYS[7], ARGV[4], -rec['submitted_ms'])
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[7], '*', 'e', audit_json)
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  return settled
end

local expired_reason = 'expired: no reviewer decided before expires_at'

local function expire(raw, rec)
  local head = '{"status":"expired","decided_at":' .. cjson.encode(rec['expires_at'])
    .. ',"decided_by":null,"decision_reason":' .. cjson.encode(expired_reason) .. ','
  local audit = cjson.encode({
    timestamp = rec['expires_at'], tenant = ARGV[4], approval_id = rec['id'],
    kind = 'expired', actor = 'system',
    details = { expires_at = rec['expires_at'], submitted_at = rec['submitted_at'] },
  })
  return settle(raw, rec, 'expired', head, tonumber(ARGV[3]), KEYS[4], audit)
end
