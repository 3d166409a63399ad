---@meta provium
-- Type definitions of Provium's Lua API for lua-language-server (written by
-- `provium lsp-setup`). Tests are Lua 5.4 files run by `provium test`; this file is
-- never run. A test keeps it in step with what the runtime registers.

---A duration: seconds as a number (`1.5`), or a string with a unit (`"500ms"`, `"30s"`, `"10m"`, `"2h"`).
---@alias provium.Duration number|string

---@class provium.Output
---Raw command output (any bytes). `tostring(w)`, `w .. s`, `#w` work as on the string, and
---so do the `string` methods (`w:match(...)`).
---@field value string The raw bytes.
local Output = {}

---True when the output contains `needle` (call with a dot: `r.stdout.contains("x")`).
---@param needle string|provium.Output
---@return boolean
function Output.contains(needle) end

---@param prefix string|provium.Output
---@return boolean
function Output.starts_with(prefix) end

---@param suffix string|provium.Output
---@return boolean
function Output.ends_with(suffix) end

---The output without leading and trailing ASCII whitespace, as a plain string.
---@return string
function Output.trim() end

---@class provium.ExecResult
---@field ok boolean `exit_code == 0`.
---@field exit_code integer 128+n when the command died from signal n.
---@field stdout provium.Output
---@field stderr provium.Output

---@class provium.Job
---@field id integer
---@field pid integer

---@class provium.JobStatus
---@field exit_code integer -1 while running.
---@field stdout provium.Output
---@field stderr provium.Output
---@field running boolean

---@class provium.Disk
---@field [1] string? The image path (or `path =`).
---@field path string?
---@field format ("raw"|"qcow2")?
---@field readonly boolean?

---@class provium.BootOptions
---@field memory (string|integer)? `"512M"` (default), `"4G"`, or MiB.
---@field cpus integer? Default 1.
---@field files table<string, string>? Guest path (absolute) = host path (relative to the project root).
---@field disks provium.Disk[]? Appear as /dev/vda, /dev/vdb, ... after a profile rootfs.
---@field append string? Extra kernel command line for this boot.
---@field boot_timeout provium.Duration? Console silence that fails the boot (30 s).
---@field gdb boolean? Start QEMU's gdb stub on a free loopback port (boots with nokaslr).
---@field networks provium.Network[]? NICs on these networks: eth0, eth1, ... in this order.

---@class provium.ExecOptions
---@field timeout provium.Duration? The guest kills the command's process group at this limit.

---@class provium.WaitOptions
---@field timeout number? Seconds (default 10).
---@field interval number? Seconds between calls (default 0.5).
---@field desc string? Named in the timeout message.

---@class provium.SpawnOptions
---@field thread boolean? A clone(CLONE_THREAD) thread instead of a forked process.

---@class provium.PtrSpec
---@field [1] integer? buf_idx
---@field [2] integer? ptr_offset
---@field [3] integer? data_len
---@field buf_idx integer?
---@field ptr_offset integer?
---@field data_len integer?
---@field data string?
---@field output boolean?

---@class provium.IoctlPtrSpec
---@field [1] integer? ptr_offset
---@field [2] integer? buf_len
---@field ptr_offset integer?
---@field buf_len integer?
---@field data string?
---@field output boolean?

---A virtual machine (`provium.create`, `provium.fixture`), or one of its workers
---(`vm:spawn`), which has every method but `boot`, `shutdown` and `spawn`.
---@class provium.VM
---@field name string `file.lua#1`; a resumed fixture VM is `file.lua@fixture#n`.
---@field profile string
---@field running boolean
---@field pid integer? A worker's pid (thread id for a thread worker).
---@field channel integer? A worker's channel.
---@field gdb string? `localhost:PORT` of QEMU's gdb stub, when booted with `gdb = true` (or `PROVIUM_GDB=1`).
local VM = {}

---Starts QEMU and blocks until the guest's agent is ready.
---@param opts provium.BootOptions?
function VM:boot(opts) end

---Runs `cmd` with `/bin/sh -c` in the guest; a non-zero exit never raises.
---@param cmd string
---@param opts provium.ExecOptions?
---@return provium.ExecResult
function VM:exec(cmd, opts) end

---Runs `cmd` and parses its stdout as JSON.
---@param cmd string
---@return any
function VM:json(cmd) end

---@param path string An absolute guest path.
---@param data string
function VM:write_file(path, data) end

---@param path string An absolute guest path.
---@return string
function VM:read_file(path) end

---The kernel log; with a pattern (a regular expression), only matching lines.
---@param pattern string?
---@return string
function VM:dmesg(pattern) end

---Mounts proc, sysfs, securityfs and devtmpfs where missing.
function VM:mount_vfs() end

---The VM's address on `net` (`"10.100.0.2"`).
---@param net provium.Network
---@return string
function VM:ip(net) end

---The MAC of the VM's NIC on `net`.
---@param net provium.Network
---@return string
function VM:mac(net) end

---The guest's name for its NIC on `net` (`"eth0"`).
---@param net provium.Network
---@return string
function VM:ifname(net) end

---Calls `fn` until it returns a true value, which it returns.
---@generic T
---@param fn fun(): T
---@param opts provium.WaitOptions?
---@return T
function VM:wait_until(fn, opts) end

---Powers the guest off (waits up to 10 s, then kills QEMU).
function VM:shutdown() end

---A breakpoint: an interactive shell in this VM (a worker: in a process descending
---from the worker) on the terminal, with the test and its timeout paused until the
---shell exits. Needs a terminal and a sequential run (`-p 1`, or one file); raises
---at once otherwise. Returns the shell's exit status.
---@return integer
function VM:shell() end

---Kills QEMU (a worker: ends the worker).
function VM:kill() end

---A raw syscall; returns the raw result (negative errno on failure).
---@param nr integer
---@param ... integer
---@return integer
function VM:syscall(nr, ...) end

---Argument `idx` (0-based) becomes a pointer to a guest copy of `data`.
---@param nr integer
---@param idx integer
---@param data string
---@param ... integer
---@return integer
function VM:syscall_buf(nr, idx, data, ...) end

---Several buffer arguments; returns the result, then each buffer after the call.
---@param nr integer
---@param bufs table<integer, string>
---@param ... integer
---@return integer, string ...
function VM:syscall_bufs(nr, bufs, ...) end

---As `syscall_bufs`, with pointers patched inside the buffers.
---@param nr integer
---@param bufs table<integer, string>
---@param ptrs provium.PtrSpec[]
---@param ... integer
---@return integer, string ...
function VM:syscall_ptr(nr, bufs, ptrs, ...) end

---`ioctl(fd, cmd, &data)`; returns the result and, for reading commands, the bytes after.
---@param fd integer
---@param cmd integer
---@param data string?
---@return integer, string?
function VM:ioctl(fd, cmd, data) end

---`ioctl(fd, cmd, &struct)` with pointers patched into the struct.
---@param fd integer
---@param cmd integer
---@param struct string
---@param specs provium.IoctlPtrSpec[]?
---@return integer, string ...
function VM:ioctl_buf(fd, cmd, struct, specs) end

---Starts `cmd` in the background.
---@param cmd string
---@return provium.Job
function VM:background(cmd) end

---Waits up to `timeout` seconds for a job (0 or nil: poll).
---@param job provium.Job|integer
---@param timeout number?
---@return provium.JobStatus
function VM:job_wait(job, timeout) end

---Kills a job's process group and returns its final status.
---@param job provium.Job|integer
---@return provium.JobStatus
function VM:job_kill(job) end

---A worker: a fork of the agent (or a thread) with its own channel and credentials.
---@param opts provium.SpawnOptions?
---@return provium.VM
function VM:spawn(opts) end

---@class provium.NetworkOptions
---@field subnet string? A /24 such as `"192.168.7.0/24"` (default: a distinct 10.x.y.0/24 per network of the run).
---@field mtu integer? Default 1500.

---@class provium.Impairment
---@field latency provium.Duration? Added each way, in order.
---@field jitter provium.Duration? Each frame's delay is latency ± jitter.
---@field loss number? The probability a frame is dropped, in [0, 1].
---@field seed integer? Seeds loss and jitter, for a reproducible run.
---@field from provium.VM? With `to`: one direction only.
---@field to provium.VM?

---@class provium.PortStats
---@field tx_frames integer Frames the VM sent into the network.
---@field tx_bytes integer
---@field rx_frames integer Frames the network delivered to the VM.
---@field rx_bytes integer
---@field dropped integer Every frame the VM sent that was not delivered.
---@field dropped_partition integer
---@field dropped_loss integer
---@field dropped_overflow integer
---@field dropped_undeliverable integer
---@field dropped_invalid integer

---A private Ethernet segment between this file's VMs (`provium.network()`).
---@class provium.Network
---@field name string `file.lua#net1`.
---@field subnet string `10.100.0.0/24`.
---@field mtu integer
local Network = {}

---Drops frames between `a` and `b`, both ways; `partition{from = a, to = b}` one way.
---@param a provium.VM|{from: provium.VM, to: provium.VM}
---@param b provium.VM?
function Network:partition(a, b) end

---Removes every partition.
function Network:heal() end

---Latency, jitter and loss for the whole segment, or one direction (`from`, `to`); `{}` clears.
---@param opts provium.Impairment
function Network:impair(opts) end

---Writes every frame from now on to `path` (pcap, readable by `tcpdump -r`); `nil` stops.
---@param path string?
function Network:capture(path) end

---The counters of `vm`'s port, from the VM's side.
---@param vm provium.VM
---@return provium.PortStats
function Network:stats(vm) end

---@class provium
provium = {}

---A VM of the named profile (`default` when omitted), not yet booted.
---@param profile string?
---@return provium.VM
function provium.create(profile) end

---A booted VM resumed from the snapshot of fixture `name` (`fixtures/<name>.lua`).
---@param name string
---@return provium.VM
function provium.fixture(name) end

---Shuts down every VM this file created.
function provium.shutdown_all() end

---A private network for this file's VMs (boot them with `networks = { net }`).
---@param opts provium.NetworkOptions?
---@return provium.Network
function provium.network(opts) end

---The release (`uname -r`) of the named profile's kernel (`default` when omitted), read
---from its image on the host: what an out-of-tree module is built against.
---@param profile string?
---@return string
function provium.kernel_release(profile) end

---Packs integers little-endian: `fmt` is space-separated u8 u16 i16 u32 i32 u64 i64 (and i8).
---@param fmt string
---@param ... integer
---@return string
function provium.pack(fmt, ...) end

---The inverse of `pack`: one integer per field.
---@param fmt string
---@param data string
---@return integer ...
function provium.unpack(fmt, data) end

---This file's time limit, counted from its start (0: none).
---@param limit provium.Duration
function provium.timeout(limit) end

---Runs `fn` now as a sub-test named `name`; a raise fails the sub-test, not the file.
---@param name string
---@param opts_or_fn { timeout: provium.Duration? }|fun()
---@param fn fun()?
function test(name, opts_or_fn, fn) end

---Inside `test()`: the sub-test is todo. At file level: the file is todo.
---@param reason string?
function todo(reason) end

---Raises `msg` (or "assertion failed") when `cond` is false or nil; else returns its arguments.
---@generic T
---@param cond T
---@param msg any?
---@return T
function assert(cond, msg, ...) end

---Raises `[msg: ]expected <expected>, got <actual>` unless `expected == actual`.
---@param expected any
---@param actual any
---@param msg string?
function assert_eq(expected, actual, msg) end

---Raises unless `haystack` contains `needle` (plain text, no patterns).
---@param haystack string|provium.Output
---@param needle string|provium.Output
---@param msg string?
function assert_contains(haystack, needle, msg) end
