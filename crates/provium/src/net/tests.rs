//! Switch tests with real unix datagram sockets standing in for QEMU: each fake guest
//! binds the port's VM path and sends to its switch path, exactly as `-netdev dgram`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// A frame arrives within this on an idle switch (generous: the machine is shared).
const ARRIVAL: Duration = Duration::from_secs(5);
/// How long a test waits to be sure that nothing arrives.
const QUIET: Duration = Duration::from_millis(150);
/// A locally administered EtherType for test payloads.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn short_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pvnet")
        .tempdir_in("/tmp")
        .unwrap()
}

fn switch_in(dir: &Path, network: &str, seed: u64) -> Switch {
    Switch::new(SwitchConfig {
        network: network.to_string(),
        dir: dir.to_path_buf(),
        subnet: Subnet::nth(0).unwrap(),
        seed: Some(seed),
    })
    .unwrap()
}

/// A socket playing a QEMU `-netdev dgram` on one port.
struct FakeGuest {
    port: Port,
    socket: UnixDatagram,
}

impl FakeGuest {
    fn attach(switch: &Switch, vm: &str) -> FakeGuest {
        let port = switch.add_port(vm).unwrap();
        FakeGuest::boot(port)
    }

    /// Binds the VM path as QEMU does (a restart binds it again).
    fn boot(port: Port) -> FakeGuest {
        let _ = fs::remove_file(&port.vm_path);
        let socket = UnixDatagram::bind(&port.vm_path).unwrap();
        FakeGuest { port, socket }
    }

    fn mac(&self) -> MacAddr {
        self.port.mac
    }

    /// Sends a frame to `destination` carrying `seq`; returns the frame.
    fn send(&self, destination: MacAddr, seq: u32) -> Vec<u8> {
        let frame = frame(destination, self.mac(), seq);
        self.socket.send_to(&frame, &self.port.switch_path).unwrap();
        frame
    }

    fn recv_within(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buffer = vec![0u8; 70_000];
        loop {
            // Another test of this process may deliver a signal (EINTR): wait out the rest.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buffer) {
                Ok(len) => return Some(buffer[..len].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("recv on {}: {e}", self.port.vm),
            }
        }
    }

    fn recv(&self) -> Vec<u8> {
        self.recv_within(ARRIVAL)
            .unwrap_or_else(|| panic!("{} received nothing within {ARRIVAL:?}", self.port.vm))
    }

    fn expect_nothing(&self) {
        if let Some(frame) = self.recv_within(QUIET) {
            panic!(
                "{} received an unexpected frame: seq {}",
                self.port.vm,
                seq_of(&frame)
            );
        }
    }

    /// Receives until `QUIET` passes without a frame; returns the sequence numbers.
    fn drain_seqs(&self) -> Vec<u32> {
        let mut seqs = Vec::new();
        while let Some(frame) = self.recv_within(QUIET) {
            seqs.push(seq_of(&frame));
        }
        seqs
    }
}

/// Polls `condition` until it holds, failing the test after `ARRIVAL`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + ARRIVAL;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {ARRIVAL:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn frame(destination: MacAddr, source: MacAddr, seq: u32) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&destination.0);
    frame.extend_from_slice(&source.0);
    frame.extend_from_slice(&ETHERTYPE);
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.resize(60, 0xa5);
    frame
}

fn seq_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[14..18].try_into().unwrap())
}

const MULTICAST: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);

#[test]
fn a_switch_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Switch>();
    shareable::<Port>();
}

#[test]
fn ports_get_addresses_macs_sockets_and_qemu_args() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let a = switch.add_port("a").unwrap();
    let b = switch.add_port("b").unwrap();
    assert_eq!(a.address.to_string(), "10.100.0.2");
    assert_eq!(b.address.to_string(), "10.100.0.3");
    assert_eq!(b.mac.to_string(), "02:70:76:64:00:03");
    assert_eq!(b.prefix_len, 24);
    assert!(a.switch_path.exists(), "the switch socket is bound at once");
    assert_eq!(
        a.netdev_arg("n0"),
        format!(
            "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            a.vm_path.display(),
            a.switch_path.display()
        )
    );
    assert_eq!(
        b.device_arg("n1"),
        "virtio-net-pci,netdev=n1,mac=02:70:76:64:00:03,romfile="
    );
    assert_eq!(a.qemu_args("n0")[0], "-netdev");
    assert_eq!(switch.port("b").unwrap(), b);
    assert_eq!(switch.ports(), vec![a, b]);

    let commas = tempfile::Builder::new()
        .prefix("pv,net")
        .tempdir_in("/tmp")
        .unwrap();
    let odd = switch_in(commas.path(), "odd", 1);
    let port = odd.add_port("a").unwrap();
    assert!(
        port.netdev_arg("n0").contains("pv,,net"),
        "commas doubled for QEMU: {}",
        port.netdev_arg("n0")
    );
}

#[test]
fn floods_unknown_and_group_frames_then_forwards_learned_unicast() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let a = FakeGuest::attach(&switch, "a");
    let b = FakeGuest::attach(&switch, "b");
    let c = FakeGuest::attach(&switch, "c");

    // Nobody has been heard from: unicast to b is flooded.
    let sent = a.send(b.mac(), 1);
    assert_eq!(b.recv(), sent);
    assert_eq!(c.recv(), sent);
    a.expect_nothing();

    // a was learned from that frame: b's reply goes to a alone.
    b.send(a.mac(), 2);
    assert_eq!(seq_of(&a.recv()), 2);
    c.expect_nothing();

    // b was learned too.
    a.send(b.mac(), 3);
    assert_eq!(seq_of(&b.recv()), 3);
    c.expect_nothing();

    for (seq, group) in [(4, MacAddr::BROADCAST), (5, MULTICAST)] {
        c.send(group, seq);
        assert_eq!(seq_of(&a.recv()), seq);
        assert_eq!(seq_of(&b.recv()), seq);
        c.expect_nothing();
    }

    // A frame for a MAC behind its own port is not sent back.
    a.send(a.mac(), 6);
    a.expect_nothing();
    b.expect_nothing();
}

#[test]
fn partition_both_ways_spares_others_and_heals() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let a = FakeGuest::attach(&switch, "a");
    let b = FakeGuest::attach(&switch, "b");
    let c = FakeGuest::attach(&switch, "c");

    switch.partition("a", "b").unwrap();
    a.send(b.mac(), 1);
    assert_eq!(seq_of(&c.recv()), 1, "flooded copy to c still delivered");
    b.expect_nothing();
    b.send(MacAddr::BROADCAST, 2);
    assert_eq!(seq_of(&c.recv()), 2);
    a.expect_nothing();
    c.send(a.mac(), 3);
    assert_eq!(seq_of(&a.recv()), 3, "c still reaches a");

    let stats = switch.stats("a").unwrap();
    assert_eq!(stats.dropped_partition, 1, "{stats:?}");
    assert_eq!(switch.stats("b").unwrap().dropped_partition, 1);

    switch.heal().unwrap();
    a.send(b.mac(), 4);
    assert_eq!(seq_of(&b.recv()), 4);
    b.send(a.mac(), 5);
    assert_eq!(seq_of(&a.recv()), 5);
}

#[test]
fn one_way_partition_leaves_the_reverse_open() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let a = FakeGuest::attach(&switch, "a");
    let b = FakeGuest::attach(&switch, "b");

    switch.partition_one_way("a", "b").unwrap();
    a.send(b.mac(), 1);
    b.expect_nothing();
    b.send(a.mac(), 2);
    assert_eq!(seq_of(&a.recv()), 2);
    assert_eq!(switch.stats("a").unwrap().dropped_partition, 1);
    assert_eq!(switch.stats("b").unwrap().dropped(), 0);
}

/// Sends `count` frames from `from` to `to` in chunks, receiving as it goes (a guest's
/// socket queue is short); returns the delivered sequence numbers.
fn exchange(from: &FakeGuest, to: &FakeGuest, count: u32) -> Vec<u32> {
    let mut delivered = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        for &seq in chunk {
            from.send(to.mac(), seq);
        }
        delivered.extend(to.drain_seqs());
    }
    delivered
}

/// Two guests that know each other's MAC (so nothing is flooded).
fn learned_pair(switch: &Switch) -> (FakeGuest, FakeGuest) {
    let a = FakeGuest::attach(switch, "a");
    let b = FakeGuest::attach(switch, "b");
    a.send(b.mac(), u32::MAX);
    b.recv();
    b.send(a.mac(), u32::MAX);
    a.recv();
    (a, b)
}

#[test]
fn loss_zero_drops_nothing_and_one_drops_everything() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);

    switch
        .impair(Impairment {
            loss: 0.0,
            ..Impairment::default()
        })
        .unwrap();
    let delivered = exchange(&a, &b, 1000);
    assert_eq!(delivered, (0..1000).collect::<Vec<_>>());

    switch
        .impair(Impairment {
            loss: 1.0,
            ..Impairment::default()
        })
        .unwrap();
    assert_eq!(exchange(&a, &b, 1000), Vec::<u32>::new());
    let stats = switch.stats("a").unwrap();
    assert_eq!(stats.dropped_loss, 1000, "{stats:?}");
    assert_eq!(stats.tx_frames, 2001);
}

/// Which of 1000 frames a 30 % loss lets through with `seed`.
fn survivors(seed: u64) -> Vec<u32> {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", seed);
    let (a, b) = learned_pair(&switch);
    switch
        .impair(Impairment {
            loss: 0.3,
            ..Impairment::default()
        })
        .unwrap();
    exchange(&a, &b, 1000)
}

#[test]
fn seeded_loss_is_reproducible_and_roughly_the_rate() {
    let first = survivors(42);
    let second = survivors(42);
    assert_eq!(first, second, "same seed, same survivors");
    assert!(
        (600..800).contains(&first.len()),
        "30% loss let {} of 1000 through",
        first.len()
    );
    assert_ne!(first, survivors(43), "another seed, other survivors");
}

#[test]
fn reseed_restarts_the_draws() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 5);
    let (a, b) = learned_pair(&switch);
    assert_eq!(switch.seed(), 5);
    switch
        .impair(Impairment {
            loss: 0.5,
            ..Impairment::default()
        })
        .unwrap();
    switch.reseed(99).unwrap();
    let first = exchange(&a, &b, 300);
    switch.reseed(99).unwrap();
    assert_eq!(exchange(&a, &b, 300), first);
    assert_eq!(switch.seed(), 99);
}

#[test]
fn latency_holds_frames_at_least_the_configured_time() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    let latency = Duration::from_millis(80);
    switch
        .impair(Impairment {
            latency,
            ..Impairment::default()
        })
        .unwrap();
    for seq in 0..5 {
        let sent = Instant::now();
        a.send(b.mac(), seq);
        assert_eq!(seq_of(&b.recv()), seq);
        let took = sent.elapsed();
        assert!(took >= latency, "frame {seq} took {took:?} < {latency:?}");
        assert!(took < latency + Duration::from_secs(2), "{took:?}");
    }
    // Back to no latency: the next frame is not held.
    switch.clear_impairments().unwrap();
    let sent = Instant::now();
    a.send(b.mac(), 9);
    b.recv();
    assert!(sent.elapsed() < latency, "{:?}", sent.elapsed());
}

#[test]
fn jitter_varies_delays_without_reordering_a_direction() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    switch
        .impair(Impairment {
            latency: Duration::from_millis(30),
            jitter: Duration::from_millis(25),
            loss: 0.0,
        })
        .unwrap();
    let start = Instant::now();
    let mut sent_at = Vec::new();
    let mut arrivals = Vec::new();
    for seq in 0..200u32 {
        sent_at.push(start.elapsed());
        a.send(b.mac(), seq);
        // Pace the sender so that the drawn delays, not the burst, decide arrival.
        std::thread::sleep(Duration::from_millis(1));
        while let Some(frame) = b.recv_within(Duration::from_micros(1)) {
            arrivals.push((seq_of(&frame), start.elapsed()));
        }
    }
    while let Some(frame) = b.recv_within(Duration::from_millis(300)) {
        arrivals.push((seq_of(&frame), start.elapsed()));
    }
    let order: Vec<u32> = arrivals.iter().map(|&(seq, _)| seq).collect();
    assert_eq!(
        order,
        (0..200).collect::<Vec<_>>(),
        "order kept under jitter"
    );
    let delays: Vec<Duration> = arrivals
        .iter()
        .map(|&(seq, at)| at - sent_at[seq as usize])
        .collect();
    let shortest = delays.iter().min().unwrap();
    let longest = delays.iter().max().unwrap();
    assert!(*shortest >= Duration::from_millis(5), "{shortest:?}");
    assert!(
        *longest - *shortest >= Duration::from_millis(15),
        "jitter spreads delays: {shortest:?}..{longest:?}"
    );
}

#[test]
fn directed_impairment_overrides_the_segment_for_its_direction_only() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    switch
        .impair(Impairment {
            loss: 1.0,
            ..Impairment::default()
        })
        .unwrap();
    switch
        .impair_direction(
            "a",
            "b",
            Impairment {
                latency: Duration::from_millis(60),
                ..Impairment::default()
            },
        )
        .unwrap();
    let sent = Instant::now();
    a.send(b.mac(), 1);
    assert_eq!(seq_of(&b.recv()), 1, "a → b: own rule, no loss");
    assert!(sent.elapsed() >= Duration::from_millis(60));
    b.send(a.mac(), 2);
    a.expect_nothing();
    assert_eq!(
        switch.stats("b").unwrap().dropped_loss,
        1,
        "b → a: segment's loss"
    );
}

#[test]
fn partition_drops_frames_already_waiting_in_a_delay_line() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    switch
        .impair(Impairment {
            latency: Duration::from_millis(300),
            ..Impairment::default()
        })
        .unwrap();
    for seq in 0..3 {
        a.send(b.mac(), seq);
    }
    // Let the switch take them into the delay line before the partition.
    std::thread::sleep(Duration::from_millis(50));
    switch.partition("a", "b").unwrap();
    assert_eq!(b.recv_within(Duration::from_millis(600)), None);
    assert_eq!(switch.stats("a").unwrap().dropped_partition, 3);
}

#[test]
fn stats_count_frames_bytes_and_drops_per_port() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let a = FakeGuest::attach(&switch, "a");
    let b = FakeGuest::attach(&switch, "b");
    let c = FakeGuest::attach(&switch, "c");
    a.send(MacAddr::BROADCAST, 1);
    b.recv();
    c.recv();
    switch.partition_one_way("b", "c").unwrap();
    b.send(MacAddr::BROADCAST, 2);
    a.recv();
    c.expect_nothing();
    a.socket
        .send_to(&[0u8; 10], &a.port.switch_path)
        .expect("send a runt");
    a.expect_nothing();

    let stats_a = switch.stats("a").unwrap();
    assert_eq!(
        stats_a,
        PortStats {
            tx_frames: 2,
            tx_bytes: 70,
            rx_frames: 1,
            rx_bytes: 60,
            dropped_invalid: 1,
            ..PortStats::default()
        }
    );
    let stats_b = switch.stats("b").unwrap();
    assert_eq!((stats_b.tx_frames, stats_b.rx_frames), (1, 1));
    assert_eq!(stats_b.dropped_partition, 1);
    assert_eq!(stats_b.dropped(), 1);
    let stats_c = switch.stats("c").unwrap();
    assert_eq!(
        (stats_c.tx_frames, stats_c.rx_frames, stats_c.rx_bytes),
        (0, 1, 60)
    );
}

#[test]
fn frames_for_a_missing_vm_are_undeliverable_until_it_boots_and_after_restarts() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let a = FakeGuest::attach(&switch, "a");
    let b_port = switch.add_port("b").unwrap();

    a.send(b_port.mac, 1);
    wait_for("the drop counted", || {
        switch.stats("a").unwrap().dropped_undeliverable == 1
    });

    let b = FakeGuest::boot(b_port.clone());
    a.send(b.mac(), 2);
    assert_eq!(seq_of(&b.recv()), 2);

    // QEMU restarts (a reboot, a fixture resume): a new socket on the same path.
    drop(b);
    let b = FakeGuest::boot(b_port);
    a.send(b.mac(), 3);
    assert_eq!(
        seq_of(&b.recv()),
        3,
        "the switch reconnects to the new QEMU"
    );
    b.send(a.mac(), 4);
    assert_eq!(seq_of(&a.recv()), 4, "and the new QEMU reaches the switch");
}

#[test]
fn a_slow_reader_gets_every_frame_in_order() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    // Far more than a unix datagram queue holds (11): the rest waits in the switch.
    for seq in 0..500 {
        a.send(b.mac(), seq);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(b.drain_seqs(), (0..500).collect::<Vec<_>>());
    assert_eq!(switch.stats("a").unwrap().dropped(), 0);
}

#[test]
fn a_guest_that_never_reads_costs_overflow_drops_beyond_the_backlog() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    for seq in 0..6000 {
        a.send(b.mac(), seq);
    }
    wait_for("every frame handled", || {
        let stats = switch.stats("a").unwrap();
        stats.tx_frames == 6001 && stats.dropped_overflow > 0
    });
    let delivered = b.drain_seqs();
    let dropped = switch.stats("a").unwrap().dropped_overflow;
    assert_eq!(delivered.len() as u64 + dropped, 6000);
    assert!(
        delivered.len() >= 4096,
        "the backlog held {}",
        delivered.len()
    );
    let prefix: Vec<u32> = (0..delivered.len() as u32).collect();
    assert_eq!(
        delivered, prefix,
        "the first frames, in order; the rest dropped"
    );
}

#[test]
fn a_full_delay_line_drops_the_excess() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    switch
        .impair(Impairment {
            latency: Duration::from_secs(30),
            ..Impairment::default()
        })
        .unwrap();
    for seq in 0..4100 {
        a.send(b.mac(), seq);
    }
    wait_for("the excess dropped", || {
        switch.stats("a").unwrap().dropped_overflow == 4
    });
    b.expect_nothing();
}

/// One record of a capture file.
#[derive(Debug)]
struct PcapRecord {
    micros: u64,
    original_len: u32,
    data: Vec<u8>,
}

/// A minimal classic-pcap reader: checks the global header, returns the records.
fn read_pcap(path: &Path) -> Vec<PcapRecord> {
    let bytes = fs::read(path).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_c3d4, "little-endian, microseconds");
    assert_eq!(&bytes[4..8], &[2, 0, 4, 0], "version 2.4");
    assert_eq!(u32_at(20), 1, "LINKTYPE_ETHERNET");
    let snaplen = u32_at(16);
    let mut records = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let (seconds, micros) = (u32_at(at) as u64, u32_at(at + 4) as u64);
        assert!(micros < 1_000_000);
        let (captured, original_len) = (u32_at(at + 8) as usize, u32_at(at + 12));
        assert!(captured as u32 <= snaplen && captured as u32 <= original_len);
        let data = bytes[at + 16..at + 16 + captured].to_vec();
        records.push(PcapRecord {
            micros: seconds * 1_000_000 + micros,
            original_len,
            data,
        });
        at += 16 + captured;
    }
    assert_eq!(at, bytes.len(), "no partial record");
    records
}

/// A capture of five frames, two of them dropped by a partition.
fn capture_sample(dir: &Path) -> (std::path::PathBuf, Vec<Vec<u8>>) {
    let switch = switch_in(dir, "lan", 1);
    let (a, b) = learned_pair(&switch);
    let path = dir.join("lan.pcap");
    switch.capture(&path).unwrap();
    let mut sent = vec![a.send(b.mac(), 1)];
    b.recv();
    sent.push(b.send(a.mac(), 2));
    a.recv();
    switch.partition("a", "b").unwrap();
    sent.push(a.send(b.mac(), 3));
    wait_for("a's frame dropped", || {
        switch.stats("a").unwrap().dropped_partition == 1
    });
    sent.push(b.send(a.mac(), 4));
    wait_for("b's frame dropped", || {
        switch.stats("b").unwrap().dropped_partition == 1
    });
    switch.heal().unwrap();
    sent.push(a.send(MacAddr::BROADCAST, 5));
    b.recv();
    assert_eq!(switch.stop_capture().unwrap(), Some(path.clone()));
    (path, sent)
}

#[test]
fn capture_records_every_frame_entering_the_switch() {
    let dir = short_dir();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let (path, sent) = capture_sample(dir.path());
    let records = read_pcap(&path);
    let data: Vec<Vec<u8>> = records.iter().map(|r| r.data.clone()).collect();
    assert_eq!(data, sent, "dropped frames included, in arrival order");
    assert!(records.iter().all(|r| r.original_len == 60));
    assert!(records.windows(2).all(|w| w[0].micros <= w[1].micros));
    assert!(
        records[0].micros + 1_000 >= started,
        "wall-clock timestamps"
    );
}

#[test]
fn a_running_capture_is_complete_on_disk_once_traffic_pauses() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    let path = dir.path().join("live.pcap");
    switch.capture(&path).unwrap();
    for seq in 0..20 {
        a.send(b.mac(), seq);
    }
    // The global header, then 20 records of a 16-byte header and a 60-byte frame.
    let complete = 24 + 20 * (16 + 60);
    wait_for("20 records on disk", || {
        fs::metadata(&path).is_ok_and(|m| m.len() == complete)
    });
    assert_eq!(read_pcap(&path).len(), 20);
    b.drain_seqs();
}

#[test]
fn a_new_capture_closes_the_previous_one_and_drop_flushes() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let (a, b) = learned_pair(&switch);
    let first = dir.path().join("first.pcap");
    let second = dir.path().join("second.pcap");
    switch.capture(&first).unwrap();
    a.send(b.mac(), 1);
    b.recv();
    switch.capture(&second).unwrap();
    a.send(b.mac(), 2);
    b.recv();
    drop(switch);
    assert_eq!(read_pcap(&first).len(), 1);
    assert_eq!(seq_of(&read_pcap(&second)[0].data), 2);
    let missing = switch_in(dir.path(), "wan", 1);
    let err = missing
        .capture(&dir.path().join("no/such/dir.pcap"))
        .unwrap_err();
    assert!(
        matches!(&err, NetError::Capture { network, .. } if network == "wan"),
        "{err:?}"
    );
}

#[test]
#[ignore = "needs tcpdump (apt-get install tcpdump)"]
fn tcpdump_reads_the_capture() {
    let dir = short_dir();
    let (path, sent) = capture_sample(dir.path());
    let output = std::process::Command::new("tcpdump")
        .args(["-n", "-e", "-r"])
        .arg(&path)
        .output()
        .expect("run tcpdump");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tcpdump failed:\n{stderr}");
    // One line per frame; tcpdump adds indented hex lines for unknown EtherTypes.
    let frames = stdout
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace));
    assert_eq!(frames.count(), sent.len(), "{stdout}");
    assert!(
        stdout.contains("02:70:76:64:00:02 > ff:ff:ff:ff:ff:ff"),
        "{stdout}"
    );
    assert!(stderr.contains("link-type EN10MB"), "{stderr}");
}

#[test]
fn errors_name_the_network_and_the_vm() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    switch.add_port("a").unwrap();
    switch.add_port("b").unwrap();
    let message = |result: Result<(), NetError>| result.unwrap_err().to_string();

    let err = switch.partition("a", "ghost").unwrap_err();
    assert!(
        matches!(&err, NetError::NotAttached { network, vm } if network == "lan" && vm == "ghost"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "network lan: VM ghost is not attached to it"
    );
    assert!(message(switch.partition_one_way("a", "a")).contains("got a twice"));
    assert!(message(switch.add_port("b").map(|_| ())).contains("VM b is already attached"));
    let lossy = Impairment {
        loss: 1.5,
        ..Impairment::default()
    };
    assert!(message(switch.impair(lossy)).contains("network lan: loss = 1.5"));
    assert!(message(switch.impair_direction("a", "b", lossy)).contains("loss = 1.5"));
    assert!(matches!(
        switch.stats("ghost"),
        Err(NetError::NotAttached { .. })
    ));

    let deep = dir.path().join("d".repeat(100));
    fs::create_dir(&deep).unwrap();
    let far = switch_in(&deep, "far", 1);
    let err = far.add_port("vm1").unwrap_err();
    assert!(
        matches!(&err, NetError::PathTooLong { network, vm, .. } if network == "far" && vm == "vm1"),
        "{err:?}"
    );
}

#[test]
fn a_full_network_refuses_the_next_vm() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    for guest in 0..addr::MAX_GUESTS {
        switch.add_port(&format!("vm{guest}")).unwrap();
    }
    let err = switch.add_port("one-more").unwrap_err();
    assert!(
        matches!(err, NetError::NetworkFull { max: 253, .. }),
        "{err:?}"
    );
}

/// Names of this process's threads.
fn thread_names() -> BTreeSet<String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn dropping_the_switch_stops_its_thread_and_removes_every_socket() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "tdrop", 1);
    let a = FakeGuest::attach(&switch, "a");
    let b = FakeGuest::attach(&switch, "b");
    a.send(b.mac(), 1);
    b.recv();
    assert!(thread_names().contains("net-tdrop"));
    let paths = [
        a.port.switch_path.clone(),
        a.port.vm_path.clone(),
        b.port.switch_path.clone(),
        b.port.vm_path.clone(),
    ];
    let started = Instant::now();
    drop(switch);
    assert!(started.elapsed() < switch::STOP_DEADLINE);
    assert!(!thread_names().contains("net-tdrop"));
    for path in &paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn shutdown_reports_success_and_ports_can_be_added_while_running() {
    let dir = short_dir();
    let switch = switch_in(dir.path(), "lan", 1);
    let a = FakeGuest::attach(&switch, "a");
    a.send(MacAddr::BROADCAST, 1);
    // A port added after traffic started is polled at once.
    let b = FakeGuest::attach(&switch, "b");
    b.send(a.mac(), 2);
    assert_eq!(seq_of(&a.recv()), 2);
    switch.shutdown().unwrap();
}
