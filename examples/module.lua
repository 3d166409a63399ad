-- The template a kernel developer copies: an out-of-tree module (examples/module/)
-- built on the host against the headers of the kernel the VM boots, injected into the
-- initramfs with `files`, loaded with parameters, driven through raw syscalls and a
-- pointer-patched ioctl, checked in dmesg, and unloaded. docs/kernels.md walks
-- through it.

-- The module's source is next to this file.
local src = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/module"

-- Build against the profile's kernel, in a copy so the source tree stays clean.
local release = provium.kernel_release()          -- e.g. 6.1.0-57-cloud-amd64
local kdir = "/lib/modules/" .. release .. "/build"
if not io.open(kdir .. "/Makefile") then
  error("no headers for kernel " .. release .. " in " .. kdir ..
        ": install linux-headers-" .. release .. " (scripts/install-deps does)")
end
local build = io.popen("mktemp -d"):read("l")
local make = io.popen(("(cp %q/* %q && make -s -C %q KDIR=%q) 2>&1"):format(src, build, build, kdir))
local log = make:read("a")
assert(make:close(), "building the module failed:\n" .. log)

local vm = provium.create()
vm:boot({
  memory = "256M",
  files = { ["/root/provium_demo.ko"] = build .. "/provium_demo.ko" },
})
os.execute(("rm -rf %q"):format(build))
vm:mount_vfs()

-- exec never raises on a non-zero exit: this one does, with the command's stderr.
local function sh(cmd)
  local r = vm:exec(cmd)
  assert(r.ok, ("%s: exit %d: %s"):format(cmd, r.exit_code, r.stderr))
  return r
end

local AT_FDCWD, O_RDWR = -100, 2
local REVERSE = 0xc0185001                         -- _IOWR('P', 1, struct provium_demo_xfer)

test("loads_with_parameters", function()
  sh("insmod /root/provium_demo.ko greeting=hi-from-provium max_len=16")
  assert_eq("hi-from-provium\n", vm:read_file("/sys/module/provium_demo/parameters/greeting"))
  assert_contains(vm:dmesg("provium_demo"), "provium_demo: loaded (greeting=hi-from-provium, max_len=16)")
end)

-- openat(2) through a raw syscall: the path is a buffer in argument 1.
local fd = vm:syscall_buf(257, 1, "/dev/provium_demo\0", AT_FDCWD, 0, O_RDWR, 0)

test("read_returns_the_greeting", function()
  assert(fd >= 0, "openat: " .. fd)
  local n, buf = vm:syscall_bufs(0, { [1] = string.rep("\0", 64) }, fd, 0, 64)   -- read(2)
  assert_eq("hi-from-provium\n", buf:sub(1, n))
end)

test("reverse_ioctl_follows_both_pointers", function()
  -- struct provium_demo_xfer { u64 in; u64 out; u32 len; u32 sum; }
  local xfer = provium.pack("u64 u64 u32 u32", 0, 0, 7, 0)
  local ret, after, out = vm:ioctl_buf(fd, REVERSE, xfer, {
    { ptr_offset = 0, buf_len = 7, data = "provium" },   -- in: the input, copied into the guest
    { ptr_offset = 8, buf_len = 7, output = true },      -- out: read back after the call
  })
  assert_eq(0, ret)
  assert_eq("muivorp", out)
  local _, _, len, sum = provium.unpack("u64 u64 u32 u32", after)
  assert_eq(7, len)
  local expected = 0
  for _, b in ipairs({ ("provium"):byte(1, -1) }) do expected = expected + b end
  assert_eq(expected, sum)                             -- the byte sum, 786
end)

test("max_len_parameter_is_enforced", function()
  local xfer = provium.pack("u64 u64 u32 u32", 0, 0, 17, 0)
  local ret = vm:ioctl_buf(fd, REVERSE, xfer, {
    { ptr_offset = 0, buf_len = 17, data = string.rep("x", 17) },
    { ptr_offset = 8, buf_len = 17, output = true },
  })
  assert_eq(-22, ret)                                  -- -EINVAL: 17 > max_len
  assert_eq(-25, vm:ioctl(fd, 0x5401, string.rep("\0", 60)))   -- TCGETS: -ENOTTY
end)

test("unloads", function()
  assert_eq(0, vm:syscall(3, fd))                      -- close(2)
  sh("rmmod provium_demo")
  assert_contains(vm:dmesg("provium_demo"), "provium_demo: unloaded after 1 reversals")
  assert(not vm:exec("test -e /dev/provium_demo").ok, "the device outlived the module")
end)

vm:shutdown()
