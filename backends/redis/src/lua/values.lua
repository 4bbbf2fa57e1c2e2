-- Shared by every script that writes more than one key: reading a value defensively, and the checks
-- that run before a script's first write (Redis applies a script's writes up to the call that
-- fails, so a refused write after them would leave an approval half-written).

-- A key's string value, nil when absent, '' (unreadable) when it holds another type: a
-- WRONGTYPE error would end the script, and a sweeper's whole pass with it, at that key.
local function read_value(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then return '' end
  return value
end

-- Whether `ms` is a lifetime SET ... PX accepts (far below its limit, far above any we set).
local function valid_px(ms)
  ms = tonumber(ms)
  return ms ~= nil and ms >= 1 and ms <= 1e15
end

-- An error naming the first of `keys` (pairs of key and the type its writes need) that holds
-- another type, else nil. Checked before a script's first write: a ZADD or SADD refused after
-- the record and its audit event were written left an approval with no deadline (it never
-- expired) or a decision the reviewer was told had failed.
local function wrong_type(keys)
  for i = 1, #keys, 2 do
    local held = redis.call('TYPE', keys[i]).ok
    if held ~= 'none' and held ~= keys[i + 1] then
      return redis.error_reply('WRONGTYPE ' .. keys[i] .. ' holds a ' .. held .. ', not a ' .. keys[i + 1])
    end
  end
  return nil
end

-- An error when `field` of the hash `key` holds what HINCRBY refuses (a float or a word an
-- operator's repair wrote), else nil. Checked before a script's first write, as `wrong_type`
-- is: `tonumber` read such a value as 0, the write went ahead, and the HINCRBY after it
-- failed, leaving a record with no deadline (never expired) or a decision half-recorded.
-- The hash itself must be one (`wrong_type` first).
-- Whether `s` is an integer as Redis reads one (string2ll): no leading zero, no '-0', within
-- a signed 64-bit integer.
local function redis_integer(s)
  if s == '0' then return true end
  local digits = string.match(s, '^%-?([1-9]%d*)$')
  if not digits or #digits > 19 then return false end
  if #digits < 19 then return true end
  local most = string.sub(s, 1, 1) == '-' and '9223372036854775808' or '9223372036854775807'
  return digits <= most
end

local function not_a_sum(key, field)
  local held = redis.call('HGET', key, field)
  if held and not redis_integer(held) then
    return redis.error_reply('damaged sum: field ' .. field .. ' of ' .. key .. ' is not an integer')
  end
  return nil
end
