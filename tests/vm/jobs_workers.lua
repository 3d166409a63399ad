-- Background jobs and worker processes (fork and thread) against a real guest.
local SYS = { write = 1, close = 3, getpid = 39, exit = 60, exit_group = 231, getuid = 102,
  setuid = 105, openat = 257, gettid = 186, prctl = 157 }

local vm = provium.create()
vm:boot()

-- The host's wall clock in seconds (Lua's os.clock is CPU time).
local function now()
  local p = assert(io.popen("date +%s.%N"))
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

-- `call` fails within a second, saying the thread worker is gone; so does the next
-- call; the VM goes on.
local function reported_gone_at_once(t, call)
  local start = now()
  local ok, err = pcall(call)
  local took = now() - start
  assert(not ok, "the call on a dead thread worker returned")
  assert_contains(tostring(err), "the worker is gone: its thread")
  assert(took < 1, string.format("the death took %.2f s to be reported", took))
  start = now()
  ok, err = pcall(t.syscall, t, SYS.getpid)
  assert(not ok, "a later call on a dead thread worker returned")
  assert_contains(tostring(err), "the worker is gone")
  assert(now() - start < 1, "the later call was not refused at once")
  assert(vm:exec("true").ok, "the VM's agent went with the thread")
end

test("background_job_polled_then_waited", function()
  local job = vm:background("sleep 1; echo finished; echo warn >&2; exit 3")
  assert(job.id ~= nil and job.pid > 0)
  local polled = vm:job_wait(job)
  assert_eq(true, polled.running)
  assert_eq(-1, polled.exit_code)
  local done = vm:job_wait(job, 20)
  assert_eq(false, done.running)
  assert_eq(3, done.exit_code)
  assert_eq("finished\n", tostring(done.stdout))
  assert_eq("warn\n", tostring(done.stderr))
end)

test("bounded_wait_on_a_running_job_returns_running", function()
  local job = vm:background("sleep 30")
  local r = vm:job_wait(job, 0.5)
  assert_eq(true, r.running)
  local killed = vm:job_kill(job)
  assert_eq(false, killed.running)
  assert(killed.exit_code ~= 0, "a killed job reported success")
end)

test("waiting_on_an_unknown_job_raises", function()
  local ok, err = pcall(vm.job_wait, vm, { id = 987654, pid = 1 })
  assert(not ok)
  assert_contains(tostring(err), "987654")
end)

test("fork_worker_has_its_own_pid_and_credentials", function()
  local w = vm:spawn()
  assert(w:syscall(SYS.getpid) ~= vm:syscall(SYS.getpid), "fork worker shares the agent pid")
  assert_eq(0, w:syscall(SYS.setuid, 1000))
  assert_eq(1000, w:syscall(SYS.getuid))
  assert_eq(0, vm:syscall(SYS.getuid))
  assert_eq("1000", w:exec("id -u").stdout.trim())
  assert_eq("0", vm:exec("id -u").stdout.trim())
  w:kill()
  local ok, err = pcall(w.exec, w, "true")
  assert(not ok, "a killed worker still answered")
  assert_contains(tostring(err), "worker")
end)

test("thread_worker_shares_fds_but_not_credentials", function()
  local fd = vm:syscall_buf(SYS.openat, 1, "/tmp/shared-fd\0", -100, 0, 0x241, 420)
  assert(fd >= 0)
  local t = vm:spawn({ thread = true })
  assert_eq(vm:syscall(SYS.getpid), t:syscall(SYS.getpid), "thread worker is in another process")
  assert(t:syscall(SYS.gettid) ~= vm:syscall(SYS.gettid), "thread worker has the agent's tid")
  assert_eq(6, t:syscall_buf(SYS.write, 1, "thread", fd, 0, 6))
  assert_eq(0, t:syscall(SYS.setuid, 1000))
  assert_eq(1000, t:syscall(SYS.getuid))
  assert_eq(0, vm:syscall(SYS.getuid))
  vm:syscall(SYS.close, fd)
  assert_eq("thread", vm:read_file("/tmp/shared-fd"))
  t:kill()
end)

test("a_thread_worker_that_exits_is_reported_gone_at_once", function()
  local t = vm:spawn({ thread = true })
  local other = vm:spawn({ thread = true })
  -- exit(2), unlike exit_group(2), ends the calling thread only.
  reported_gone_at_once(t, function() return t:syscall(SYS.exit, 0) end)
  assert(other:syscall(SYS.gettid) > 0, "another thread worker went with it")
end)

test("a_thread_worker_killed_by_seccomp_is_reported_gone_at_once", function()
  local t = vm:spawn({ thread = true })
  -- prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT): the kernel kills the thread at its
  -- next syscall other than read, write, exit or sigreturn.
  assert_eq(0, t:syscall(SYS.prctl, 22, 1))
  reported_gone_at_once(t, function() return t:syscall(SYS.getpid) end)
end)

test("a_worker_that_exits_is_reported_gone", function()
  local w = vm:spawn()
  local ok, err = pcall(w.syscall, w, SYS.exit_group, 0)
  assert(not ok, "exit_group(2) in a worker returned")
  assert(vm:exec("true").ok, "the VM's own agent died with the worker")
end)

test("the_agent_exiting_is_reported_not_hung_on", function()
  local ok, err = pcall(vm.syscall, vm, SYS.exit_group, 0)
  assert(not ok, "exit_group(2) in the agent returned")
  assert_contains(tostring(err), "agent")
  ok = pcall(vm.exec, vm, "true")
  assert(not ok, "a call after the agent died succeeded")
end)

vm:kill()
