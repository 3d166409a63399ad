-- Read the kernel log, whole or filtered by a regular expression; mount the
-- virtual filesystems a kernel test usually needs.
local vm = provium.create()
vm:boot()

assert_contains(vm:dmesg(), "Linux version")
local lines = vm:dmesg("Command line:")
assert_contains(lines, "rdinit=")

-- Messages written to /dev/kmsg show up in dmesg.
vm:exec("echo provium-marker > /dev/kmsg")
assert_contains(vm:dmesg("provium-marker"), "provium-marker")

vm:mount_vfs()
assert(vm:exec("test -d /sys/kernel/security").ok, "securityfs not mounted")

vm:shutdown()
