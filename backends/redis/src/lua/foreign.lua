-- Which of KEYS hold records this backend did not write (ADR v1)? Checked inside Redis so
-- that the periodic adoption scan moves key names, not every record, over the network.
-- Our records end with the `expires_ms` field, or with it and then the action's digest (see
-- record.rs); nothing else does, and the agent's input, which comes earlier in the document,
-- cannot imitate the end of it.
-- Only the value's tail is read: the ending fits in it, and an adoption pass runs this over
-- every record every `adopt_interval`.
local foreign = {}
for _, key in ipairs(KEYS) do
  -- pcall: a key of another type under approval:* is nobody's record, and must not stop the pass.
  local value = redis.pcall('GETRANGE', key, -192, -1)
  if type(value) == 'string' and value ~= ''
    and not string.find(value, '"expires_ms":%-?%d+}$')
    and not string.find(value, '"expires_ms":%-?%d+,"action_digest":"sha256:%x+"}$') then
    table.insert(foreign, key)
  end
end
return foreign
