-- Sub-tests run inline, in order, and are reported one per line; a failing
-- sub-test does not stop the file. todo() marks work that is known missing.
local vm = provium.create()
vm:boot({ memory = "256M" })

local order = {}

test("proc_is_mounted", function()
  table.insert(order, "first")
  assert(vm:exec("test -r /proc/self/status").ok)
end)

test("tmp_is_writable", function()
  table.insert(order, "second")
  assert(vm:exec("touch /tmp/x && rm /tmp/x").ok)
end)

test("wait_until_a_file_appears", function()
  vm:exec("(sleep 1; touch /tmp/ready) >/dev/null 2>&1 &")
  vm:wait_until(function()
    return vm:exec("test -e /tmp/ready").ok
  end, { timeout = 20, desc = "/tmp/ready exists" })
end)

test("not_written_yet", function()
  todo("waiting on the kernel side")
  error("never reached")
end)

-- Code after a test() block runs after it.
assert_eq("first", order[1])
assert_eq("second", order[2])

vm:shutdown()
