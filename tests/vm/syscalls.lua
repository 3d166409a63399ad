-- The kernel-testing surface: raw syscalls with buffers and pointer patching, and
-- ioctls. Syscall numbers are x86_64.
local SYS = { read = 0, write = 1, close = 3, lseek = 8, pread64 = 17, writev = 20, getpid = 39,
  socket = 41, getuid = 102, setuid = 105, openat = 257, pipe2 = 293 }
local AT_FDCWD, O_RDONLY, O_WRONLY_CREAT_TRUNC, O_RDWR = -100, 0, 0x241, 2
local EFAULT, ENOTTY = 14, 25

local vm = provium.create()
vm:boot()

local function open(path, flags)
  local fd = vm:syscall_buf(SYS.openat, 1, path .. "\0", AT_FDCWD, 0, flags, 420)
  assert(fd >= 0, "openat " .. path .. " failed: " .. fd)
  return fd
end

test("getpid_through_syscall", function()
  local pid = vm:syscall(SYS.getpid)
  assert(pid > 1, "agent pid " .. pid)
  assert_eq(pid, vm:syscall(SYS.getpid))
end)

test("open_write_close_through_syscall_buf", function()
  local fd = open("/tmp/sc.txt", O_WRONLY_CREAT_TRUNC)
  assert_eq(5, vm:syscall_buf(SYS.write, 1, "hello", fd, 0, 5))
  assert_eq(0, vm:syscall(SYS.close, fd))
  assert_eq("hello", vm:read_file("/tmp/sc.txt"))
end)

test("read_into_an_output_buffer_through_syscall_bufs", function()
  vm:write_file("/tmp/in.txt", "kernel bytes")
  local fd = open("/tmp/in.txt", O_RDONLY)
  local n, buf = vm:syscall_bufs(SYS.read, { [1] = string.rep("\0", 32) }, fd, 0, 32)
  assert_eq(12, n)
  assert_eq(32, #buf)
  assert_eq("kernel bytes", buf:sub(1, n))
  vm:syscall(SYS.close, fd)
end)

test("writev_with_pointers_patched_through_syscall_ptr", function()
  local fd = open("/tmp/writev.txt", O_WRONLY_CREAT_TRUNC)
  -- struct iovec[2] { void *base; size_t len; }: the bases are patched in by the agent.
  local iov = provium.pack("u64 u64 u64 u64", 0, 3, 0, 4)
  local r = vm:syscall_ptr(SYS.writev, { [1] = iov }, {
    { buf_idx = 1, ptr_offset = 0, data_len = 3, data = "abc" },
    { 1, 16, 4, "defg" },
  }, fd, 0, 2)
  assert_eq(7, r)
  vm:syscall(SYS.close, fd)
  assert_eq("abcdefg", vm:read_file("/tmp/writev.txt"))
end)

test("syscall_ptr_returns_output_sub_buffers", function()
  vm:write_file("/tmp/readv.txt", "0123456789")
  local fd = open("/tmp/readv.txt", O_RDONLY)
  local iov = provium.pack("u64 u64 u64 u64", 0, 4, 0, 6)
  local r, iov_after, first, second = vm:syscall_ptr(19, { [1] = iov }, {
    { buf_idx = 1, ptr_offset = 0, data_len = 4, output = true },
    { buf_idx = 1, ptr_offset = 16, data_len = 6, output = true },
  }, fd, 0, 2)
  assert_eq(10, r)
  assert_eq(32, #iov_after)
  assert_eq("0123", first)
  assert_eq("456789", second)
  vm:syscall(SYS.close, fd)
end)

test("fionread_on_a_pipe_through_ioctl", function()
  local r, fds = vm:syscall_bufs(SYS.pipe2, { [0] = string.rep("\0", 8) }, 0, 0)
  assert_eq(0, r)
  local rfd, wfd = provium.unpack("i32 i32", fds)
  assert_eq(5, vm:syscall_buf(SYS.write, 1, "12345", wfd, 0, 5))
  local res, arg = vm:ioctl(rfd, 0x541B, string.rep("\0", 4)) -- FIONREAD
  assert_eq(0, res)
  assert_eq(5, provium.unpack("i32", arg))
  -- TCGETS on a pipe is not a tty.
  assert_eq(-ENOTTY, vm:ioctl(rfd, 0x5401, string.rep("\0", 60)))
  vm:syscall(SYS.close, rfd)
  vm:syscall(SYS.close, wfd)
end)

test("tcgets_on_a_pty_through_ioctl", function()
  -- Opening /dev/ptmx needs devpts beside it; the default profile mounts only
  -- /proc, /sys, /dev and /tmp.
  assert(vm:exec("mkdir -p /dev/pts && (grep -q ' /dev/pts ' /proc/mounts || mount -t devpts devpts /dev/pts)").ok)
  local fd = open("/dev/ptmx", O_RDWR)
  local res, termios = vm:ioctl(fd, 0x5401, string.rep("\0", 60)) -- TCGETS
  assert_eq(0, res)
  assert_eq(60, #termios)
  local iflag, oflag, cflag = provium.unpack("u32 u32 u32", termios)
  assert(cflag ~= 0, "TCGETS left c_cflag empty")
  -- No data: only the result comes back.
  local only = table.pack(vm:ioctl(fd, 0x5401))
  assert_eq(-EFAULT, only[1])
  assert_eq(nil, only[2])
  vm:syscall(SYS.close, fd)
end)

test("siocgifconf_through_ioctl_buf", function()
  vm:exec("ip link set lo up")
  local sock = vm:syscall(SYS.socket, 2, 2, 0) -- AF_INET, SOCK_DGRAM
  assert(sock >= 0, "socket: " .. sock)
  -- struct ifconf { int ifc_len; char *ifc_buf; }: the buffer pointer sits at offset 8.
  local ifconf = provium.pack("i32 i32 u64", 40 * 4, 0, 0)
  local res, after, ifreqs = vm:ioctl_buf(sock, 0x8912, ifconf, {
    { ptr_offset = 8, buf_len = 40 * 4, output = true },
  })
  assert_eq(0, res)
  local len = provium.unpack("i32", after)
  assert(len >= 40, "ifc_len " .. len)
  assert_eq("lo\0", ifreqs:sub(1, 3))
  vm:syscall(SYS.close, sock)
end)

test("values_above_2_53_are_exact", function()
  local big = 9007199254740993 -- 2^53 + 1
  local all_ones = provium.pack("u64", -1)
  assert_eq("\255\255\255\255\255\255\255\255", all_ones)
  local fd = open("/tmp/big", O_WRONLY_CREAT_TRUNC)
  assert_eq(big, vm:syscall(SYS.lseek, fd, big, 0))
  assert_eq(16, vm:syscall_buf(SYS.write, 1, provium.pack("u64 i64", big, math.mininteger), fd, 0, 16))
  vm:syscall(SYS.close, fd)
  -- The file is sparse and 2^53 bytes long: read its tail back with pread64.
  fd = open("/tmp/big", O_RDONLY)
  local n, data = vm:syscall_bufs(SYS.pread64, { [1] = string.rep("\0", 16) }, fd, 0, 16, big)
  assert_eq(16, n)
  vm:syscall(SYS.close, fd)
  local a, b = provium.unpack("u64 i64", data)
  assert_eq(big, a)
  assert_eq(math.mininteger, b)
end)

test("bad_guest_pointer_returns_efault_and_the_agent_lives", function()
  assert_eq(-EFAULT, vm:syscall(SYS.write, 1, 16, 5))
  assert(vm:exec("true").ok)
end)

test("argument_errors_are_clear", function()
  local ok, err = pcall(vm.syscall_buf, vm, SYS.write, 3, "x", 1, 0, 1)
  assert(not ok)
  assert_contains(tostring(err), "index 3")
  ok, err = pcall(vm.syscall_ptr, vm, SYS.writev, { [1] = string.rep("\0", 12) },
    { { buf_idx = 1, ptr_offset = 8, data_len = 1 } }, 1, 0, 1)
  assert(not ok)
  assert_contains(tostring(err), "offset 8")
  ok, err = pcall(vm.syscall_ptr, vm, SYS.writev, { [1] = string.rep("\0", 16) },
    { { buf_idx = 2, ptr_offset = 0, data_len = 1 } }, 1, 0, 1)
  assert(not ok)
  assert_contains(tostring(err), "buf_idx 2")
  ok, err = pcall(vm.syscall, vm, SYS.getpid, 1, 2, 3, 4, 5, 6, 7)
  assert(not ok)
  assert_contains(tostring(err), "6")
end)

vm:shutdown()
