-- Move files in and out of the guest, binary-safe.
local vm = provium.create()
vm:boot()

-- Binary data survives the round trip unchanged, NUL bytes included.
local blob = provium.pack("u32 u64 u8", 0xdeadbeef, -1, 0) .. "\0text\255"
vm:write_file("/tmp/blob.bin", blob)
assert_eq(blob, vm:read_file("/tmp/blob.bin"))

-- The guest sees what the host wrote.
vm:write_file("/tmp/greeting", "hello from the host\n")
assert_eq("hello from the host", vm:exec("cat /tmp/greeting").stdout.trim())

-- Errors name the guest path and the errno.
local ok, err = pcall(vm.read_file, vm, "/no/such/file")
assert(not ok)
assert_contains(tostring(err), "/no/such/file")

vm:shutdown()
