-- Shared by decide.lua and expire.lua (after values.lua). Both declare the same KEYS:
--   1 record  2 pending index  3 target index (accepted/rejected)  4 expired index
--   5 deadlines  6 retention  7 submitted-ms sums  8 audit stream  9 shadow
-- and take ARGV[1] = now (ms), ARGV[2] = the pending head, ARGV[3] = expired retention (ms),
-- ARGV[4] = tenant, ARGV[5] = channel, ARGV[6] = the channel message, ARGV[7] = audit max length,
-- ARGV[8] = the expired head template, ARGV[9] = the expiry audit event template, ARGV[10] = the
-- settled channel (its messages carry the settled record, so waking a waiter costs no read;
-- ARGV[5] gets the bare id as before, for instances of an earlier version). Both templates
-- come from Rust (the event from approvals-core, which builds every audit event), with quoted
-- slots such as "$expires_at" that `fill` replaces with the record's values.

-- Replaces every quoted slot `"$name"` in `template` with the JSON text `value`.
local function fill(template, slot, value)
  local quoted = '"' .. slot .. '"'
  local out, from = {}, 1
  while true do
    local i, j = string.find(template, quoted, from, true)
    if not i then break end
    table.insert(out, string.sub(template, from, i - 1))
    table.insert(out, value)
    from = j + 1
  end
  table.insert(out, string.sub(template, from))
  return table.concat(out)
end

-- The record, or its shadow once the record key has lapsed with the approval's lifetime.
local function current_record()
  return read_value(KEYS[1]) or read_value(KEYS[9])
end

-- The record in `raw` if it has everything settling it reads, else nil. A corrupt or
-- foreign value must be answered as such, not fail the script half-way (a Lua error reads
-- as an outage to the caller, which then retries in vain).
local function settleable(raw)
  local decoded, rec = pcall(cjson.decode, raw)
  if decoded and type(rec) == 'table' and type(rec['expires_ms']) == 'number'
      and type(rec['submitted_ms']) == 'number' and type(rec['status']) == 'string'
      and type(rec['id']) == 'string' then
    return rec
  end
  return nil
end

local function index_member(rec)
  return string.format('%015d', rec['submitted_ms']) .. ':' .. rec['id']
end

local function deadline_member(rec)
  return ARGV[4] .. ':' .. string.format('%d', rec['submitted_ms']) .. ':' .. rec['id']
end

-- Moves a pending approval (`rec`) to `status` in one step, its record now `settled`:
-- record, indexes, sums, audit, wake-up.
local function settle_as(settled, rec, status, ttl_ms, target_index, audit_json)
  if not valid_px(ttl_ms) then
    return redis.error_reply('invalid retention: ' .. tostring(ttl_ms) .. ' ms')
  end
  local refused = wrong_type({KEYS[2], 'zset', target_index, 'zset', KEYS[5], 'zset',
    KEYS[6], 'zset', KEYS[7], 'hash'}) or not_a_sum(KEYS[7], ARGV[4])
  if refused then return refused end
  local member = index_member(rec)
  local now = tonumber(ARGV[1])
  -- First: the one write left that can fail (a stream someone replaced with another type).
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[7], '*', 'e', audit_json)
  redis.call('SET', KEYS[1], settled, 'PX', ttl_ms)
  redis.call('DEL', KEYS[9])
  -- The sum follows the index: an entry an earlier step took out was subtracted then.
  if redis.call('ZREM', KEYS[2], member) == 1 then
    redis.call('HINCRBY', KEYS[7], ARGV[4], -rec['submitted_ms'])
  end
  redis.call('ZADD', target_index, 0, member)
  redis.call('ZREM', KEYS[5], deadline_member(rec))
  redis.call('ZADD', KEYS[6], now + ttl_ms, ARGV[4] .. ':' .. status .. ':' .. member)
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  redis.call('PUBLISH', ARGV[10], ARGV[6] .. '\n' .. settled)
  return settled
end

-- Moves the pending record `raw` to `status`, its head replaced by `head` (see settle_as).
local function settle(raw, rec, status, head, ttl_ms, target_index, audit_json)
  local pending_head = ARGV[2]
  if string.sub(raw, 1, #pending_head) ~= pending_head then
    return redis.error_reply('corrupt record: pending head not found in ' .. KEYS[1])
  end
  local settled = head .. string.sub(raw, #pending_head + 1)
  return settle_as(settled, rec, status, ttl_ms, target_index, audit_json)
end

local function expire(raw, rec)
  local expires_at = cjson.encode(rec['expires_at'])
  local head = fill(ARGV[8], '$expires_at', expires_at)
  local audit = fill(ARGV[9], '$expires_at', expires_at)
  audit = fill(audit, '$submitted_at', cjson.encode(rec['submitted_at']))
  audit = fill(audit, '$tenant', cjson.encode(ARGV[4]))
  audit = fill(audit, '$approval_id', cjson.encode(rec['id']))
  return settle(raw, rec, 'expired', head, tonumber(ARGV[3]), KEYS[4], audit)
end
