-- vm:wait_until(fn, opts): calls fn until it returns a true value (returned), raising
-- "wait_until: <desc> not met within <timeout>s" at the caller's line otherwise.
-- Written in Lua so that errors raised by fn reach the caller unchanged; the options
-- are checked on the Rust side, with every other option table.
local now, sleep, check = ...
local error, format, tostring, type, min = error, string.format, tostring, type, math.min

local function callable(value)
  if type(value) == "function" then
    return true
  end
  local mt = getmetatable(value)
  return type(mt) == "table" and mt.__call ~= nil
end

return function(self, fn, opts)
  if not callable(fn) then
    error("wait_until: argument 1 must be a function (call it as vm:wait_until(fn, opts)), not a "
      .. type(fn) .. " value", 2)
  end
  local problem, timeout, interval, desc = check(opts)
  if problem then
    error(problem, 2)
  end
  local deadline = now() + timeout
  while true do
    local result = fn()
    if result then
      return result
    end
    local left = deadline - now()
    if left <= 0 then
      error(format("wait_until: %s not met within %ss", desc, tostring(timeout)), 2)
    end
    sleep(min(interval, left))
  end
end
