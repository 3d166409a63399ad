-- Three VMs on two networks: a on left, b on right, r on both with ip_forward.
local left, right = provium.network(), provium.network()
local a, r, b = provium.create(), provium.create(), provium.create()
a:boot({ memory = "256M", networks = { left } })
r:boot({ memory = "256M", networks = { left, right } })
b:boot({ memory = "256M", networks = { right } })

local function sh(vm, cmd)
  local res = vm:exec(cmd)
  assert(res.ok, ("%s: %s: exit %d: %s%s"):format(vm.name, cmd, res.exit_code, res.stdout, res.stderr))
  return res
end

test("the_router_has_a_nic_on_each_network", function()
  assert_eq("eth0", r:ifname(left))
  assert_eq("eth1", r:ifname(right))
  assert(r:ip(left) ~= r:ip(right))
  assert(left.subnet ~= right.subnet, "two networks of one run share " .. left.subnet)
end)

test("a_reaches_b_through_the_router", function()
  assert(not a:exec("ping -c 1 -W 1 " .. b:ip(right)).ok, "reachable before any route")
  sh(r, "echo 1 > /proc/sys/net/ipv4/ip_forward")
  sh(a, ("ip route add %s via %s"):format(right.subnet, r:ip(left)))
  sh(b, ("ip route add %s via %s"):format(left.subnet, r:ip(right)))
  sh(a, "ping -c 2 -W 2 " .. b:ip(right))
  sh(b, "ping -c 2 -W 2 " .. a:ip(left))
end)

provium.shutdown_all()
