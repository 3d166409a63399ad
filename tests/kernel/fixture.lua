-- A fixture on the kernel built from source: resumed twice, each copy independent.
local a = provium.fixture("prepared")
local b = provium.fixture("prepared")

test("resumes_the_prepared_state", function()
  local release = a:exec("uname -r").stdout.trim()
  assert(release:match("%-provium$"), "not Provium's kernel: " .. release)
  assert_eq("by the fixture on " .. release, a:read_file("/tmp/prepared"))
end)

test("copies_are_independent", function()
  a:write_file("/tmp/only-a", "a")
  assert(not b:exec("test -e /tmp/only-a").ok, "a write in one copy reached the other")
  assert(b:syscall(39) > 0, "getpid in the second copy")
end)

test("modprobe_uses_the_build_modules", function()
  local r = b:exec("modprobe loop && grep -q '^loop ' /proc/modules")
  assert(r.ok, tostring(r.stderr))
end)
