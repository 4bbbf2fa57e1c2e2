-- Which of KEYS hold records this backend did not write (ADR v1)? Checked inside Redis so
-- that the periodic adoption scan moves key names, not every record, over the network.
-- Our records end with the `expires_ms` field (see record.rs); nothing else does.
local foreign = {}
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value and not string.find(value, '"expires_ms":%-?%d+}$') then
    table.insert(foreign, key)
  end
end
return foreign
