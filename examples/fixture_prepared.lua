-- provium.fixture(name) returns a booted VM resumed from fixtures/<name>.lua's
-- snapshot: the setup is paid once per run, each request gets its own fresh copy.
local vm = provium.fixture("prepared")

test("state_from_the_fixture", function()
  assert_eq("prepared once\n", vm:read_file("/srv/data/note"))
  assert_contains(vm:exec("cat /proc/mounts").stdout, "securityfs")
  assert_contains(vm:exec("ps").stdout, "sleep 100000")
end)

test("copies_are_independent", function()
  local other = provium.fixture("prepared")
  vm:write_file("/srv/data/note", "changed here")
  assert_eq("prepared once\n", other:read_file("/srv/data/note"))
  other:shutdown()
end)
