-- The machine Provium chooses for the default profile (not shared with tests/kernel,
-- whose default profile is microvm).
local vm = provium.create()
vm:boot({ memory = "256M" })

test("the_default_profile_boots_on_q35", function()
  -- The cloud kernel's /boot/config says ACPI and PCI are built in: Provium picks q35
  -- (its host bridge is Intel's Q35 MCH, 8086:29c0; pc's i440FX is 8086:1237).
  assert_eq("0x29c0", vm:exec("cat /sys/bus/pci/devices/0000:00:00.0/device").stdout.trim())
end)

test("the_agent_channel_and_the_modules_disk_are_pci_express_devices", function()
  -- Both virtio devices sit on q35's root complex; the modules disk is mounted.
  local r = vm:exec("grep -l 0x1af4 /sys/bus/pci/devices/*/vendor | wc -l")
  assert(tonumber(r.stdout.trim()) >= 2, "virtio PCI devices: " .. r.stdout)
  assert(vm:exec("grep -q ' /lib/modules/' /proc/mounts").ok)
end)

vm:shutdown()
