-- Wraps a Rust-backed function so that its errors reach Lua as plain strings located
-- at the caller's line, like errors from Lua's own library functions.
local plain_message = ...
local pcall, error = pcall, error

local function unwrap(ok, ...)
  if ok then
    return ...
  end
  local raised = ...
  local message = plain_message(raised)
  if message then
    -- unwrap is tail-called, so level 2 is the wrapper's caller.
    error(message, 2)
  end
  error(raised, 0)
end

return function(f)
  return function(...)
    return unwrap(pcall(f, ...))
  end
end
