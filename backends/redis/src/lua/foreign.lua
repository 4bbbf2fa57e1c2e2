-- Which of KEYS hold records this backend did not write (ADR v1)? Checked inside Redis so
-- that the periodic adoption scan moves key names, not every record, over the network.
-- Our records end with the `expires_ms` field, or with it and then the action's digest (see
-- record.rs); nothing else does, and the agent's input, which comes earlier in the document,
-- cannot imitate the end of it.
local foreign = {}
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value
    and not string.find(value, '"expires_ms":%-?%d+}$')
    and not string.find(value, '"expires_ms":%-?%d+,"action_digest":"sha256:%x+"}$') then
    table.insert(foreign, key)
  end
end
return foreign
