-- vm:wait_until(fn, opts): calls fn until it returns a true value (returned), raising
-- "wait_until: <desc> not met within <timeout>s" at the caller's line otherwise.
-- Written in Lua so that errors raised by fn reach the caller unchanged.
local now, sleep = ...
local error, format, tostring, type, min = error, string.format, tostring, type, math.min

local function callable(value)
  if type(value) == "function" then
    return true
  end
  local mt = getmetatable(value)
  return type(mt) == "table" and mt.__call ~= nil
end

local function seconds(opts, key, default, positive)
  local value = opts[key]
  if value == nil then
    return default
  end
  if type(value) ~= "number" or value < 0 or (positive and value == 0) or value ~= value then
    local wanted = positive and "a positive" or "a non-negative"
    error(format("wait_until: %s must be %s number of seconds, not %s", key, wanted, tostring(value)), 3)
  end
  return value
end

return function(self, fn, opts)
  if not callable(fn) then
    error("wait_until: argument 1 must be a function (call it as vm:wait_until(fn, opts)), not a "
      .. type(fn) .. " value", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("wait_until: argument 2 (options) must be a table, not a " .. type(opts) .. " value", 2)
  end
  opts = opts or {}
  local timeout = seconds(opts, "timeout", 10, false)
  local interval = seconds(opts, "interval", 0.5, true)
  local desc = opts.desc == nil and "condition" or tostring(opts.desc)
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
