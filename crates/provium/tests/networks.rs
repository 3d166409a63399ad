//! Networks from the command line: bad input named before anything boots, two files
//! with networks in parallel that cannot reach each other, a fixture on a network
//! refused, and nothing (QEMU, socket) left after a run. The traffic itself is
//! checked by the Lua suite in tests/net/.

mod common;

use std::fs;

use common::qemus_under;
use common::Sandbox;

/// Errors raised by the network API itself, without a VM booting.
#[test]
fn bad_network_input_is_named_before_anything_boots() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "bad.lua",
            "local net = provium.network()\n\
             local a, b = provium.create(), provium.create()\n\
             local function err(f) local ok, e = pcall(f); assert(not ok); return e end\n\
             test('unknown_network_option', function() error(err(function() provium.network({ subnett = '10.1.1.0/24' }) end)) end)\n\
             test('bad_subnet', function() error(err(function() provium.network({ subnet = '10.1.0.0/16' }) end)) end)\n\
             test('bad_mtu', function() error(err(function() provium.network({ mtu = 'big' }) end)) end)\n\
             test('negative_latency', function() error(err(function() net:impair({ latency = -1 }) end)) end)\n\
             test('loss_outside', function() error(err(function() net:impair({ loss = 1.5 }) end)) end)\n\
             test('unknown_impair_option', function() error(err(function() net:impair({ lossy = 0.1 }) end)) end)\n\
             test('partition_off_network', function() error(err(function() net:partition(a, b) end)) end)\n\
             test('not_a_network', function() error(err(function() a:boot({ networks = { 'lan' } }) end)) end)\n\
             test('ip_off_network', function() error(err(function() return a:ip(net) end)) end)\n\
             test('no_method_call', function() error(err(function() return net.heal() end)) end)\n\
             assert_eq('bad.lua#net1', net.name)\n\
             assert_eq('10.100.0.0/24', net.subnet)\n\
             assert_eq('network bad.lua#net1', tostring(net))\n",
        )],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    for expected in [
        "unknown_network_option ... FAIL: t/bad.lua:4: network bad.lua#net2: unknown option \"subnett\" (known: subnet, mtu)",
        "bad_subnet ... FAIL: t/bad.lua:5: network bad.lua#net2: subnet: \"10.1.0.0/16\": only /24 networks are supported",
        "bad_mtu ... FAIL: t/bad.lua:6: network bad.lua#net2: mtu must be a whole number from 68 to 65535, not a string",
        "negative_latency ... FAIL: t/bad.lua:7: network bad.lua#net1: latency = -1 is negative; a delay cannot be",
        "loss_outside ... FAIL: t/bad.lua:8: network bad.lua#net1: loss = 1.5 is outside [0, 1]",
        "unknown_impair_option ... FAIL: t/bad.lua:9: network bad.lua#net1: unknown option \"lossy\" (known: from, to, latency, jitter, loss, seed)",
        "partition_off_network ... FAIL: t/bad.lua:10: network bad.lua#net1: VM bad.lua#1 is not attached to it",
        "not_a_network ... FAIL: t/bad.lua:11: VM bad.lua#1: boot: networks: [1] must be a network (provium.network()), not a string",
        "ip_off_network ... FAIL: VM bad.lua#1: ip: the VM is not on network bad.lua#net1 (boot it with networks = { net })",
        "no_method_call ... FAIL: heal: call it as a method, net:heal(...) with a colon",
    ] {
        run.assert_stdout_contains(expected);
    }
    // Nothing booted: the only failures are the ten sub-tests.
    run.assert_stdout_contains("bad.lua ... FAIL");
    assert!(!run.stdout.contains("console"), "{run}");
}

/// Two files run at once, each with its own network on the same subnet: were the
/// segments shared, `a` (10.77.0.2 in the first file) would reach 10.77.0.3 (`d` in
/// the second). They wait for each other through files in the sandbox. (Counting the
/// frames `d` receives would not prove it: the guests' own IPv6 multicast reaches it.)
#[test]
fn parallel_files_with_networks_cannot_reach_each_other_and_leave_nothing() {
    let sb = Sandbox::new();
    let sync = sb.root().join("sync");
    fs::create_dir(&sync).unwrap();
    let wait = "local function wait_for(path)\n\
                  for _ = 1, 600 do\n\
                    local f = io.open(path) if f then f:close() return end\n\
                    os.execute('sleep 0.1')\n\
                  end\n\
                  error('the other file never wrote ' .. path)\n\
                end\n\
                local function mark(path) assert(io.open(path, 'w')):close() end\n\
                local sync = assert(os.getenv('NET_SYNC'))\n";
    sb.tree(
        "t",
        &[
            (
                "first.lua",
                &format!(
                    "{wait}local net = provium.network({{ subnet = '10.77.0.0/24' }})\n\
                     local a = provium.create()\n\
                     a:boot({{ memory = '256M', networks = {{ net }} }})\n\
                     assert_eq('10.77.0.2', a:ip(net))\n\
                     wait_for(sync .. '/second-up')\n\
                     local r = a:exec('ping -c 2 -W 1 10.77.0.3')\n\
                     mark(sync .. '/first-done')\n\
                     assert(not r.ok, 'a reached the other file\\'s VM: ' .. tostring(r.stdout))\n\
                     a:shutdown()\n"
                ),
            ),
            (
                "second.lua",
                &format!(
                    "{wait}local net = provium.network({{ subnet = '10.77.0.0/24' }})\n\
                     local c, d = provium.create(), provium.create()\n\
                     c:boot({{ memory = '256M', networks = {{ net }} }})\n\
                     d:boot({{ memory = '256M', networks = {{ net }} }})\n\
                     assert_eq('10.77.0.3', d:ip(net))\n\
                     assert(c:exec('ping -c 1 -W 2 10.77.0.3').ok, 'no ping inside one file')\n\
                     mark(sync .. '/second-up')\n\
                     wait_for(sync .. '/first-done')\n\
                     provium.shutdown_all()\n"
                ),
            ),
        ],
    );
    let run = sb.provium_with_env(
        &["test", "-p", "2", "t"],
        &[("NET_SYNC", sync.to_str().unwrap())],
    );
    run.expect_code(0);
    // A passing run leaves no run directory (no socket, no capture) and no QEMU.
    assert!(sb.run_dirs().is_empty(), "{run}");
    assert_eq!(qemus_under(&sb.runs), Vec::<String>::new(), "{run}");
}

#[test]
fn a_fixture_on_a_network_is_refused_with_the_reason() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            (
                "fixtures/lan.lua",
                "local net = provium.network()\n\
                 local vm = provium.create()\n\
                 vm:boot({ memory = '256M', networks = { net } })\n",
            ),
            ("use.lua", "local vm = provium.fixture('lan')\n"),
        ],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    run.assert_stdout_contains("fixture 'lan' failed: its VM is on network fixtures/lan.lua#net1 (eth0); a fixture's VM cannot be on a network");
    assert_eq!(qemus_under(&sb.runs), Vec::<String>::new(), "{run}");
}
