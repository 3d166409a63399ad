-- The test framework's globals. Runs once in every fresh Lua state, before the test
-- file. Raising is done here, in Lua, with error(msg, 2), so that failures are plain
-- strings located at the caller's line (as Lua's own functions do); the Rust hooks
-- only decide and format.
local hooks = ...
local error, xpcall, traceback = error, xpcall, debug.traceback

-- Raised to unwind a test body or the file after todo() or os.exit(); the Rust side
-- reads why from its own state, never from this value.
local STOP = setmetatable({}, { __tostring = function() return "provium stop" end })

-- Runs fn, returning ok, the raised value and a traceback taken where it was raised.
local function protected(fn)
  local trace
  local ok, err = xpcall(fn, function(e)
    if e ~= STOP then
      trace = traceback(nil, 2)
    end
    return e
  end)
  return ok, err, trace
end

function test(name, opts, fn)
  if fn == nil then
    fn, opts = opts, nil
  end
  local problem = hooks.begin_test(name, opts, fn)
  if problem then
    error(problem, 2)
  end
  local ok, err, trace = protected(fn)
  if hooks.end_test(ok, err, trace) then
    error(STOP, 0)
  end
end

function todo(reason)
  hooks.request_todo(reason)
  error(STOP, 0)
end

function assert(cond, msg, ...)
  if cond then
    return cond, msg, ...
  end
  if msg == nil then
    msg = "assertion failed"
  end
  error(msg, 2)
end

function assert_eq(expected, actual, msg)
  if expected ~= actual then
    error(hooks.eq_message(expected, actual, msg), 2)
  end
end

function assert_contains(haystack, needle, msg)
  local failure = hooks.contains_failure(haystack, needle, msg)
  if failure then
    error(failure, 2)
  end
end

-- The whole run shares one process: os.exit ends this file only.
os.exit = function(code)
  hooks.request_exit(code)
  error(STOP, 0)
end

print = hooks.print
os.execute = hooks.execute

return protected
