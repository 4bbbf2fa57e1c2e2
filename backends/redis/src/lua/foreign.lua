-- Which of KEYS hold records this backend did not write (ADR v1)? Checked inside Redis so
-- that the periodic adoption scan moves key names, not every record, over the network.
-- Our records end with the `expires_ms` field, or with it and then the action's digest (see
-- record.rs); nothing else does, and the agent's input, which comes earlier in the document,
-- cannot imitate the end of it.
-- Nor does any of ours start with a status in the ADR v1 service's names: a v1 instance
-- beside this one decides a record of ours by rewriting its status as `approved` or `denied`
-- (the adoption pass then takes the decision over; the Python peer's rewrite, with spaces,
-- already fails the ending).
-- Only the value's ends are read: they fit in a few bytes, and an adoption pass runs this
-- over every record every `adopt_interval`.
local foreign = {}
for _, key in ipairs(KEYS) do
  -- pcall: a key of another type under approval:* is nobody's record, and must not stop the pass.
  local value = redis.pcall('GETRANGE', key, -192, -1)
  if type(value) == 'string' and value ~= '' then
    local head = redis.call('GETRANGE', key, 0, 31)
    if (not string.find(value, '"expires_ms":%-?%d+}$')
        and not string.find(value, '"expires_ms":%-?%d+,"action_digest":"sha256:%x+"}$'))
      or string.find(head, '^{"status":"approved"')
      or string.find(head, '^{"status":"denied"') then
      table.insert(foreign, key)
    end
  end
end
return foreign
