//! Unprivileged multi-VM networks: an Ethernet switch inside the provium process, one
//! unix datagram socket pair per guest NIC, with partitions, loss, latency and capture
//! applied in the switch (no TAP, no bridge, no `tc`, no root).
//!
//! # QEMU backend: `-netdev dgram` over unix sockets
//!
//! QEMU 7.2 offers two unix-socket backends that need no privileges, both checked on
//! Debian 12's QEMU 7.2.22 (`qemu-system-x86_64 -netdev help` lists `dgram` and
//! `stream`, and two TCG guests pinged each other over each):
//!
//! - `-netdev dgram,local.type=unix,local.path=V,remote.type=unix,remote.path=S`:
//!   every Ethernet frame is one datagram. QEMU unlinks a stale `V`, binds it, and
//!   sends each frame with `sendto(S)`, resolving `S` per frame and dropping the frame
//!   when nobody is bound there (`ENOENT`). It never connects, so a switch socket can
//!   exist before QEMU starts, outlive it, and serve the next QEMU on the same path
//!   (a fixture resume) without any reconnection protocol. QEMU leaves `V` behind when
//!   it exits; the switch removes it.
//! - `-netdev stream,addr.type=unix`: frames prefixed by a 4-byte big-endian length
//!   on a stream socket. The switch would need framing and partial-read state per
//!   port, and in 7.2 a client (`server=off`) that cannot connect at start-up keeps
//!   running with its link silently dead: 7.2 has no `reconnect` (checked: a listener
//!   created a second later never saw a connection).
//!
//! `dgram` is used: no framing, no connection state, the socket can be bound long
//! before the guest boots. Each port has two switch-side sockets: `rx`, bound at `S`
//! and never connected, so any incarnation of the port's QEMU can send to it; and
//! `tx`, unbound and connected to `V`, so that when the guest's queue is full (Linux
//! queues at most `net.unix.max_dgram_qlen` = 10 datagrams for an unconnected
//! receiver) `send` fails with `EAGAIN` and `poll` wakes the switch when QEMU has read
//! — backpressure instead of loss. A single socket connected to `V` would refuse
//! frames from a restarted QEMU (`EPERM` on its side) until the switch next sent to it.
//!
//! # Forwarding and impairments
//!
//! One thread per switch polls every port (`ppoll`, batches read with `recvmmsg`),
//! learns source MACs, forwards known unicast to its port and floods broadcast,
//! multicast and unknown unicast to every other port. Each copy of a frame is then
//! judged for its directed pair (from port, to port): a partition drops it; loss drops
//! it with the pair's probability, drawn from a SplitMix64 stream per directed pair
//! seeded from the network's seed (so one direction's drops do not depend on another
//! direction's traffic); latency ± jitter puts it in the pair's delay line, whose due
//! times never decrease, so jitter never reorders a direction. A partition set while
//! frames wait in a delay line drops them when they come due: after
//! [`Switch::partition`] returns nothing more crosses. Rules live in shared state with
//! a generation counter the thread checks before every frame, so a change applies to
//! the next frame the switch handles.
//!
//! A direction's own impairment ([`Switch::impair_direction`]) replaces the
//! segment-wide one ([`Switch::impair`]) for that direction;
//! [`Switch::clear_impairments`] removes both kinds. Partitions are independent of
//! impairments and removed by [`Switch::heal`].
//!
//! # Capture
//!
//! [`Switch::capture`] records every frame *entering* the switch, before any drop
//! decision, timestamped on arrival: a capture shows what each guest sent, including
//! frames a partition or loss then dropped (the per-port stats say how many). The file
//! is classic libpcap (microsecond timestamps, `LINKTYPE_ETHERNET`), readable by
//! `tcpdump -r`; it is flushed whenever the switch goes idle and closed by
//! [`Switch::stop_capture`] or when the switch is dropped.
//!
//! # Buffers and drops
//!
//! Nothing is dropped silently: every copy of a frame that is not delivered is
//! counted on the sending port with its reason ([`PortStats`]). Besides partitions
//! and loss, a direction's delay line holds at most 4096 frames and a guest that
//! reads slower than it is sent to gets a 4096-frame backlog (a Linux TCP flow's
//! largest window) before `overflow` drops; frames for a guest whose QEMU is not
//! running are `undeliverable`.
//!
//! # Addresses
//!
//! See [`addr`]: a distinct `10.x.y.0/24` per network within a run, `.1` reserved,
//! guests at `.2`, `.3`, … in port order, MACs `02:70:76:x:y:host`.
//!
//! # Attaching a guest
//!
//! [`Switch::add_port`] binds the switch's socket at once and returns a [`Port`]
//! whose [`Port::qemu_args`] are the `-netdev dgram,…` and `-device
//! virtio-net-pci,…,mac=…` for that NIC. QEMU may start before or after, and may be
//! replaced (reboot, resume) on the same port. The guest needs `virtio_net` (with
//! `failover` and `net_failover` when modular); it should find its interface by the
//! port's MAC, bring it up and add the port's address with its prefix length.

pub mod addr;
mod engine;
pub mod options;
mod pcap;
mod prng;
mod rules;
mod switch;
mod sys;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use addr::{MacAddr, Subnet, SubnetAllocator};
pub use options::{check_loss, parse_duration, DurationValue, Impairment};
pub use switch::{Port, PortStats, Switch, SwitchConfig, STOP_DEADLINE};

/// Everything that can go wrong with a switched network, naming the network and,
/// where one is concerned, the VM.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("network {network}: {option} = {value:?} is not a duration ({reason}); give seconds as a number or a string such as \"50ms\" or \"1.5s\"")]
    BadDuration {
        network: String,
        option: String,
        value: String,
        reason: String,
    },
    #[error("network {network}: {option} = {value} is negative; a delay cannot be")]
    NegativeDuration {
        network: String,
        option: String,
        value: String,
    },
    #[error("network {network}: loss = {value} is outside [0, 1] (a probability: 0.1 drops one frame in ten)")]
    LossOutOfRange { network: String, value: f64 },
    #[error("network {network}: unknown option {option:?} (known: {known})")]
    UnknownOption {
        network: String,
        option: String,
        known: String,
    },
    #[error("network {network}: VM {vm} is not attached to it")]
    NotAttached { network: String, vm: String },
    #[error("network {network}: VM {vm} is already attached to it")]
    AlreadyAttached { network: String, vm: String },
    #[error("network {network}: {action} needs two different VMs, got {vm} twice")]
    SameVm {
        network: String,
        vm: String,
        action: &'static str,
    },
    #[error("network {network}: cannot attach VM {vm}: the /24 has room for {max} guests")]
    NetworkFull {
        network: String,
        vm: String,
        max: usize,
    },
    #[error(
        "network {network}: no free 10.x.y.0/24 left in this run ({allocated} networks allocated)"
    )]
    SubnetsExhausted { network: String, allocated: usize },
    #[error("network {network}: socket path {path} for VM {vm} is {len} bytes; unix sockets allow {max} (use a shorter run directory)")]
    PathTooLong {
        network: String,
        vm: String,
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("network {network}: cannot create the socket {path} for VM {vm}: {source}")]
    Socket {
        network: String,
        vm: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("network {network}: cannot start the switch thread: {source}")]
    Start { network: String, source: io::Error },
    #[error("network {network}: the switch thread has stopped: {reason}")]
    Stopped { network: String, reason: String },
    #[error("network {network}: the switch thread did not stop within {deadline:?}")]
    StopTimeout { network: String, deadline: Duration },
    #[error("network {network}: capture to {path}: {source}")]
    Capture {
        network: String,
        path: PathBuf,
        source: io::Error,
    },
}
