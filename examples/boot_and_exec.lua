-- Boot the built-in default profile (the host's kernel plus a generated busybox
-- initramfs) and run shell commands in the guest.
local vm = provium.create()
vm:boot()

local r = vm:exec("uname -r")
assert(r.ok, "uname failed: " .. r.stderr)
assert(#r.stdout.value > 0, "uname printed nothing")

-- A non-zero exit never raises: inspect exit_code and stderr instead.
local missing = vm:exec("ls /does-not-exist")
assert_eq(false, missing.ok)
assert(missing.exit_code ~= 0)
assert(missing.stderr.contains("does-not-exist"))

-- stdout/stderr are string wrappers: .value, .contains, .starts_with, .trim.
assert_eq("hello", vm:exec("echo hello").stdout.trim())

vm:shutdown()
