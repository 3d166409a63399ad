-- The body of shared_1..4.lua: four files request the same fixture at once; it must
-- be built once for all. A helper file: run on its own it only returns a function.
local builds = require("builds")

return function()
  local vm = provium.fixture("base")

  test("fixture_state_is_present", function()
    assert_eq("by the base fixture\n", vm:read_file("/tmp/prepared"))
    assert_contains(tostring(vm:exec("cat /proc/mounts").stdout), "securityfs /sys/kernel/security")
    assert(vm:exec("ls /sys/kernel/security").ok, "securityfs is not usable")
    assert_contains(tostring(vm:exec("ps").stdout), "sleep 100000")
  end)

  test("built_once_per_run", function()
    assert_eq(1, builds.count("base"))
  end)

  test("writes_stay_in_this_vm", function()
    vm:write_file("/tmp/prepared", "changed by " .. debug.getinfo(1, "S").short_src)
    local again = provium.fixture("base")
    assert_eq("by the base fixture\n", again:read_file("/tmp/prepared"))
    again:shutdown()
  end)
end
