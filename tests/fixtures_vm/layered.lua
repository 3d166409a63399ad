-- A fixture that uses another sees its parent's state plus its own.
local builds = require("builds")

local vm = provium.fixture("layered")

test("parent_and_own_state", function()
  assert_eq("by the base fixture\n", vm:read_file("/tmp/prepared"))
  assert_eq("added by the layered fixture\n", vm:read_file("/tmp/layer"))
  assert_contains(tostring(vm:exec("cat /proc/mounts").stdout), "securityfs")
end)

test("each_fixture_built_once", function()
  assert_eq(1, builds.count("layered"))
  assert_eq(1, builds.count("base"))
end)

test("the_parent_fixture_stays_clean", function()
  local base = provium.fixture("base")
  assert(not base:exec("test -e /tmp/layer").ok, "base gained the layered fixture's file")
end)
