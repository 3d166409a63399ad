-- Two VMs on one network: reachability, TCP, partitions, latency, loss, capture.
local net = provium.network()
local a, b = provium.create(), provium.create()
a:boot({ memory = "256M", networks = { net } })
b:boot({ memory = "256M", networks = { net } })
local ip_a, ip_b = a:ip(net), b:ip(net)

-- exec that must succeed (exec itself never raises on a non-zero exit).
local function sh(vm, cmd)
  local r = vm:exec(cmd)
  assert(r.ok, ("%s: %s: exit %d: %s%s"):format(vm.name, cmd, r.exit_code, r.stdout, r.stderr))
  return r
end

-- Whether something listens on TCP `port`, from the kernel's own tables (busybox nc
-- binds the IPv6 wildcard, which takes IPv4 too).
local function listening(vm, port)
  return vm:exec(("cat /proc/net/tcp /proc/net/tcp6 | grep -qi ':%04X '"):format(port)).ok
end

-- Each test starts from a clean segment, whatever the one before it left.
local function clean()
  net:heal()
  net:impair({})
end

-- A TCP receiver on `port` writing what arrives to `file`. nc's own stdin would be the
-- job's /dev/null, whose end makes nc drop the connection: `-e` gives the data to a
-- program instead.
local function receive(vm, port, file)
  sh(vm, ("printf '#!/bin/sh\\nexec cat > %s\\n' > /tmp/recv-%d && chmod +x /tmp/recv-%d")
    :format(file, port, port))
  local job = vm:background(("nc -l -p %d -e /tmp/recv-%d"):format(port, port))
  vm:wait_until(function() return listening(vm, port) end,
    { timeout = 10, desc = ("a listener on %s port %d"):format(vm.name, port) })
  return job
end

local function pings(from, to_ip)
  return from:exec("ping -c 1 -W 2 " .. to_ip).ok
end

-- The round trip of `count` pings, in milliseconds (busybox prints min/avg/max).
local function rtt(from, to_ip, count)
  local out = sh(from, ("ping -c %d -i 0.2 -W 3 %s"):format(count, to_ip)).stdout
  local avg = out:match("min/avg/max = [%d.]+/([%d.]+)/")
  assert(avg, "no round-trip summary in: " .. tostring(out))
  return tonumber(avg)
end

test("addresses_are_assigned_in_order", function()
  local prefix = net.subnet:match("^(%d+%.%d+%.%d+%.)0/24$")
  assert(prefix, "subnet " .. net.subnet)
  assert_eq(prefix .. "2", ip_a)
  assert_eq(prefix .. "3", ip_b)
  assert_eq("eth0", a:ifname(net))
  assert_contains(sh(a, "cat /sys/class/net/eth0/address").stdout, a:mac(net))
  assert_contains(sh(b, "cat /sys/class/net/eth0/mtu").stdout, "1500")
end)

test("ping_both_ways", function()
  assert(pings(a, ip_b), "a cannot reach b")
  assert(pings(b, ip_a), "b cannot reach a")
end)

test("tcp_transfer_of_1_mib_arrives_byte_identical", function()
  clean()
  sh(a, "dd if=/dev/urandom of=/tmp/blob bs=1024 count=1024 2>/dev/null")
  local listener = receive(b, 7000, "/tmp/got")
  sh(a, ("nc %s 7000 < /tmp/blob"):format(ip_b))
  local done = b:job_wait(listener, 30)
  assert(not done.running, "the receiver did not finish")
  assert_eq("1048576", sh(b, "wc -c < /tmp/got").stdout.trim())
  assert_eq(sh(a, "md5sum < /tmp/blob").stdout.trim(), sh(b, "md5sum < /tmp/got").stdout.trim())
end)

test("a_partition_cuts_both_ways_and_heal_restores", function()
  clean()
  net:partition(a, b)
  assert(not pings(a, ip_b), "a reached b across a partition")
  assert(not pings(b, ip_a), "b reached a across a partition")
  assert(net:stats(a).dropped_partition > 0, "no drop counted")
  net:heal()
  assert(pings(a, ip_b), "a cannot reach b after heal")
  assert(pings(b, ip_a), "b cannot reach a after heal")
end)

-- Checked at the guests' NICs (busybox's nc has no UDP): what b sends reaches a,
-- nothing a sends reaches b.
test("a_one_way_partition_lets_a_hear_b_only", function()
  clean()
  local function rx(vm)
    return tonumber(sh(vm, "cat /sys/class/net/eth0/statistics/rx_packets").stdout.trim())
  end
  -- Neighbour entries both ways first: ARP replies would otherwise be cut too.
  sh(a, ("arp -s %s %s"):format(ip_b, b:mac(net)))
  sh(b, ("arp -s %s %s"):format(ip_a, a:mac(net)))
  net:partition({ from = a, to = b })
  local a_before, b_before = rx(a), rx(b)
  assert(not b:exec("ping -c 3 -i 0.2 -W 1 " .. ip_a).ok, "b got replies from a")
  assert(rx(a) >= a_before + 3, ("a received %d frames of b's 3 pings"):format(rx(a) - a_before))
  assert(not a:exec("ping -c 3 -i 0.2 -W 1 " .. ip_b).ok, "a got replies from b")
  assert_eq(b_before, rx(b), "frames from a reached b across a one-way partition")
  assert(net:stats(a).dropped_partition >= 6, "a's dropped frames were not counted")
  net:heal()
  assert(pings(a, ip_b), "a cannot reach b after heal")
end)

test("latency_raises_the_round_trip", function()
  clean()
  local base = rtt(a, ip_b, 5)
  net:impair({ latency = "100ms" })
  local slow = rtt(a, ip_b, 5)
  net:impair({})
  assert(slow - base >= 180, ("RTT %.1f ms with 100 ms each way, %.1f ms without"):format(slow, base))
end)

test("loss_of_one_drops_everything_and_zero_nothing", function()
  clean()
  net:impair({ loss = 1.0, seed = 42 })
  local before = net:stats(a).dropped_loss
  assert(not a:exec("ping -c 3 -i 0.2 -W 1 " .. ip_b).ok, "a ping crossed loss = 1")
  assert(net:stats(a).dropped_loss >= before + 3, "the lost frames were not counted")
  net:impair({ loss = 0.0 })
  local out = sh(a, "ping -c 20 -i 0.1 -W 2 " .. ip_b).stdout
  assert_contains(out, "20 packets received")
  net:impair({})
end)

test("a_capture_holds_the_icmp_echoes_and_tcpdump_reads_it", function()
  clean()
  local pcap = os.tmpname()
  net:capture(pcap)
  sh(a, "ping -c 3 -i 0.2 " .. ip_b)
  net:capture(nil)
  local p = io.popen(("tcpdump -n -r %s icmp 2>&1"):format(pcap))
  local out = p:read("a")
  p:close()
  os.remove(pcap)
  local requests, replies = 0, 0
  for _ in out:gmatch("ICMP echo request") do requests = requests + 1 end
  for _ in out:gmatch("ICMP echo reply") do replies = replies + 1 end
  assert(requests >= 3 and replies >= 3, "tcpdump -r read:\n" .. out)
  assert_contains(out, ip_a .. " > " .. ip_b)
end)

a:shutdown()
b:shutdown()
