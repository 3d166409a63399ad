-- One kernel on three machines: microvm (virtio-mmio) for the PVH vmlinux, q35 (PCI
-- Express, Provium's choice for the bzImage) and pc (PCI, asked for); disks, modules
-- and a network on each.
local function sh(vm, cmd)
  local r = vm:exec(cmd)
  assert(r.ok, ("%s: %s: exit %d: %s%s"):format(vm.name, cmd, r.exit_code, r.stdout, r.stderr))
  return r
end

local net = provium.network()
local micro = provium.create()
local pc = provium.create("pc")
local q35 = provium.create("q35")
micro:boot({ memory = "256M", networks = { net } })
pc:boot({ memory = "256M", networks = { net } })
q35:boot({ memory = "256M", networks = { net } })

test("microvm_has_no_pci_and_pc_has", function()
  assert_eq("", sh(micro, "ls /sys/bus/pci/devices 2>/dev/null | head -1").stdout.trim())
  -- The devices bound to the virtio-mmio driver (beside its bind/unbind/uevent files).
  local mmio = sh(micro, "ls /sys/bus/platform/drivers/virtio-mmio/ | grep -vcE '^(bind|unbind|uevent|module)$'")
  assert(tonumber(mmio.stdout.trim()) >= 2, "virtio-mmio devices: " .. mmio.stdout)
  assert(sh(pc, "ls /sys/bus/pci/devices | wc -l").stdout.trim() ~= "0")
end)

test("the_host_bridge_names_the_machine", function()
  local bridge = "cat /sys/bus/pci/devices/0000:00:00.0/device"
  assert_eq("0x1237", sh(pc, bridge).stdout.trim()) -- i440FX
  assert_eq("0x29c0", sh(q35, bridge).stdout.trim()) -- Q35 MCH
end)

test("modules_load_on_each", function()
  for _, vm in ipairs({ micro, pc, q35 }) do
    sh(vm, "modprobe loop && grep -q '^loop ' /proc/modules")
  end
end)

test("the_machines_reach_each_other", function()
  assert_eq("eth0", micro:ifname(net))
  sh(micro, "ping -c 1 -W 2 " .. pc:ip(net))
  sh(pc, "ping -c 1 -W 2 " .. micro:ip(net))
  sh(q35, "ping -c 1 -W 2 " .. micro:ip(net))
end)

provium.shutdown_all()
