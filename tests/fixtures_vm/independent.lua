-- Two VMs from one fixture share its state and nothing else.
local a = provium.fixture("base")
local b = provium.fixture("base")

test("both_start_from_the_snapshot", function()
  for _, vm in ipairs({ a, b }) do
    assert_eq("by the base fixture\n", vm:read_file("/tmp/prepared"))
  end
end)

test("files_written_in_one_are_absent_in_the_other", function()
  a:write_file("/tmp/only-a", "a")
  assert(not b:exec("test -e /tmp/only-a").ok, "b sees a's file")
  b:exec("rm /tmp/prepared")
  assert_eq("by the base fixture\n", a:read_file("/tmp/prepared"))
end)

test("processes_are_separate", function()
  a:exec("sleep 2000 >/dev/null 2>&1 &")
  assert_contains(tostring(a:exec("ps").stdout), "sleep 2000")
  assert(not b:exec("ps").stdout.contains("sleep 2000"), "b runs a's process")
end)

test("every_method_works_after_resume", function()
  local pid = a:syscall(39)
  assert(pid > 0, "getpid returned " .. pid)
  local job = a:background("echo from-job")
  assert_eq("from-job\n", tostring(a:job_wait(job, 10).stdout))
  local w = a:spawn()
  assert(w:syscall(39) == w.pid, "the worker has its own pid")
  assert_eq(0, w:exec("true").exit_code)
  w:kill()
  assert(a:dmesg():len() > 0, "empty kernel log")
end)
