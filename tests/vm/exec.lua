-- vm:exec, the string wrappers, vm:json and vm:wait_until against a real guest.
local vm = provium.create()
vm:boot()

test("exec_returns_exit_code_and_both_streams", function()
  local r = vm:exec("echo out; echo err >&2; exit 7")
  assert_eq(false, r.ok)
  assert_eq(7, r.exit_code)
  assert_eq("out\n", r.stdout.value)
  assert_eq("err\n", r.stderr.value)
end)

test("string_wrappers", function()
  local out = vm:exec("printf '  hello world  '").stdout
  assert(out.contains("lo wo"))
  assert(not out.contains("absent"))
  assert(out.starts_with("  hel"))
  assert_eq("hello world", out.trim())
  assert_eq("  hello world  ", tostring(out))
  assert_eq("  hello world  !", out .. "!")
  assert_eq(">  hello world  ", ">" .. out)
  assert_eq(15, #out)
end)

test("commands_run_with_busybox_on_path_and_vfs_mounted", function()
  assert(vm:exec("test -r /proc/self/status && test -d /sys/kernel && test -c /dev/null && test -d /tmp").ok)
  -- busybox ash answers `command -v sh` with the bare applet name; `which` searches PATH.
  assert_eq("/bin/sh", (vm:exec("which sh").stdout.trim():gsub("^/usr", "")))
end)

test("a_backgrounded_grandchild_does_not_hang_exec", function()
  local r = vm:exec("sleep 30 & echo started")
  assert_eq("started\n", r.stdout.value)
end)

test("binary_output_is_preserved", function()
  local r = vm:exec("printf 'a\\000b\\377'")
  assert_eq("a\0b\255", r.stdout.value)
end)

test("json_parses_into_tables", function()
  local t = vm:json([[echo '{"n": 3, "list": [1, 2, {"k": true}], "s": "x"}']])
  assert_eq(3, t.n)
  assert_eq(2, t.list[2])
  assert_eq(true, t.list[3].k)
  assert_eq("x", t.s)
end)

test("json_failure_names_exit_code_command_and_stderr", function()
  local ok, err = pcall(vm.json, vm, "echo broken >&2; exit 4")
  assert(not ok)
  assert_contains(tostring(err), "command failed (exit 4): echo broken >&2; exit 4")
  assert_contains(tostring(err), "broken")
end)

test("json_invalid_output_names_the_parse_error", function()
  local ok, err = pcall(vm.json, vm, "echo '{not json'")
  assert(not ok)
  assert_contains(tostring(err), "JSON")
end)

test("wait_until_succeeds_and_times_out", function()
  local calls = 0
  vm:wait_until(function()
    calls = calls + 1
    return calls >= 3
  end, { interval = 0.01 })
  assert_eq(3, calls)
  local ok, err = pcall(vm.wait_until, vm, function() return false end,
    { timeout = 0.3, interval = 0.05, desc = "never" })
  assert(not ok)
  assert_contains(tostring(err), "wait_until: never not met within 0.3s")
end)

test("output_over_the_payload_cap_is_an_error_naming_the_cap", function()
  local ok, err = pcall(vm.exec, vm, "head -c 17000000 /dev/zero")
  assert(not ok)
  assert_contains(tostring(err), "16 MiB")
  -- The agent is still there afterwards.
  assert(vm:exec("true").ok)
end)

test("exec_with_a_timeout_kills_the_command_in_the_guest", function()
  local started = os.time()
  local ok, err = pcall(vm.exec, vm, "sleep 1000; echo never", { timeout = 1 })
  assert(not ok, "a command past its timeout returned")
  assert_contains(tostring(err), "exec timed out after 1s: sleep 1000; echo never")
  assert(os.time() - started < 10, "the timeout did not end the call")
  -- The whole process group went; the VM takes the next command.
  local ps = vm:exec("ps -o pid,args").stdout.value
  assert(not ps:find("sleep 1000", 1, true), ps)
  assert(vm:exec("true").ok)
  ok, err = pcall(vm.exec, vm, "true", { timout = 1 })
  assert_contains(tostring(err), "exec: unknown option 'timout' (known options: timeout)")
end)

vm:shutdown()
