-- Where fixture builds are recorded: $PROVIUM_FIXTURE_BUILDS when set (the Rust CLI
-- tests point it at a temporary file), otherwise a file in /tmp named after this
-- provium process (its PID and start time, which no other process shares), so that
-- every file of one run sees the same record and no other run's.
local M = {}

local function run_key()
  local shell = assert(io.popen("echo $PPID-$(cut -d' ' -f22 /proc/$PPID/stat)"))
  local key = shell:read("l")
  shell:close()
  return key
end

function M.path()
  return os.getenv("PROVIUM_FIXTURE_BUILDS") or ("/tmp/provium-fixture-builds-" .. run_key())
end

function M.record(name)
  local f = assert(io.open(M.path(), "a"))
  f:write(name, "\n")
  f:close()
end

function M.count(name)
  local n = 0
  local f = io.open(M.path(), "r")
  if not f then return 0 end
  for line in f:lines() do
    if line == name then n = n + 1 end
  end
  f:close()
  return n
end

return M
