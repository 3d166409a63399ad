-- Parse a command's JSON output straight into Lua tables.
local vm = provium.create()
vm:boot()

local info = vm:json([[echo '{"name": "provium", "cpus": 1, "tags": ["vm", "test"]}']])
assert_eq("provium", info.name)
assert_eq(1, info.cpus)
assert_eq("test", info.tags[2])

-- A failing command raises with its exit code and stderr.
local ok, err = pcall(vm.json, vm, "echo oops >&2; exit 3")
assert(not ok)
assert_contains(tostring(err), "command failed (exit 3)")
assert_contains(tostring(err), "oops")

vm:shutdown()
