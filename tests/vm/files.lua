-- File transfer, boot-time files and disks, dmesg and mount_vfs against a real guest.
-- This file's directory, absolute: `files` resolves relative host paths against the
-- project root, which is not the current directory when this file runs through a
-- link from tests/kernel/ (its own provium.toml).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
if here:sub(1, 1) ~= "/" then
  local pwd = io.popen("pwd")
  here = pwd:read("l") .. "/" .. here
  pwd:close()
end
local disk = os.tmpname()
do
  local f = assert(io.open(disk, "wb"))
  f:write("PROVIUMDISK" .. string.rep("\0", 1024 * 1024 - 11))
  f:close()
end

local vm = provium.create()
vm:boot({
  memory = "384M",
  files = { ["/etc/provium-injected"] = here .. "files.lua" },  -- this very file
  disks = { { disk, format = "raw", readonly = true } },
})
os.remove(disk)

test("binary_round_trip_of_every_byte_value", function()
  local bytes = {}
  for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
  local data = table.concat(bytes):rep(4096) -- 1 MiB
  vm:write_file("/tmp/all-bytes", data)
  assert_eq(#data, tonumber(vm:exec("wc -c < /tmp/all-bytes").stdout.trim()))
  assert(vm:read_file("/tmp/all-bytes") == data, "1 MiB round trip differs")
end)

test("empty_file_round_trip", function()
  vm:write_file("/tmp/empty", "")
  assert_eq("", vm:read_file("/tmp/empty"))
end)

test("read_of_a_missing_path_names_path_and_errno", function()
  local ok, err = pcall(vm.read_file, vm, "/missing/file.txt")
  assert(not ok)
  assert_contains(tostring(err), "/missing/file.txt")
  assert_contains(tostring(err), "ENOENT")
end)

test("write_into_a_missing_directory_names_path_and_errno", function()
  local ok, err = pcall(vm.write_file, vm, "/no-such-dir/x", "data")
  assert(not ok)
  assert_contains(tostring(err), "/no-such-dir/x")
  assert_contains(tostring(err), "ENOENT")
end)

test("write_over_16_MiB_is_refused", function()
  local ok, err = pcall(vm.write_file, vm, "/tmp/big", string.rep("x", 16 * 1024 * 1024 + 1))
  assert(not ok)
  assert_contains(tostring(err), "16 MiB")
end)

test("boot_files_are_in_place_before_init", function()
  assert_contains(vm:read_file("/etc/provium-injected"), "File transfer, boot-time files")
end)

test("disk_appears_as_vda", function()
  assert_eq("PROVIUMDISK", vm:exec("head -c 11 /dev/vda").stdout.value)
  assert_eq(false, vm:exec("echo x > /dev/vda").ok, "a readonly disk accepted a write")
end)

test("dmesg_whole_and_filtered", function()
  vm:exec("echo provium-files-marker > /dev/kmsg")
  assert_contains(vm:dmesg(), "provium-files-marker")
  local filtered = vm:dmesg("files-mark[e]r")
  assert_contains(filtered, "provium-files-marker")
  assert(not filtered:find("Linux version", 1, true), "filter kept unrelated lines")
end)

test("mount_vfs_is_idempotent", function()
  vm:mount_vfs()
  vm:mount_vfs()
  assert(vm:exec("grep -q securityfs /proc/mounts").ok)
end)

test("modprobe_loads_a_module_of_the_kernel", function()
  -- The kernel's whole modules tree is there, with its modules.dep.
  local release = vm:exec("uname -r").stdout.trim()
  assert(vm:exec("test -f /lib/modules/" .. release .. "/modules.dep").ok)
  local r = vm:exec("modprobe loop && grep -q '^loop ' /proc/modules")
  assert(r.ok, r.stderr.value)
  assert(vm:exec("test -b /dev/loop0 || test -e /dev/loop-control").ok)
end)

vm:shutdown()
