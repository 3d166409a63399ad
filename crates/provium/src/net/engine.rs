//! The switch thread: polls every port, learns MACs, forwards or floods each frame,
//! and applies the directed pair's partition, loss and delay; state shared with the
//! [`Switch`](super::Switch) handle lives in [`Shared`].

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::addr::MacAddr;
use super::pcap::PcapWriter;
use super::prng::SplitMix64;
use super::rules::{PairRule, Rules};
use super::switch::PortStats;
use super::sys::{self, Datagram, EventFd, RecvBatch};

/// Frames one direction's delay line holds before further frames are dropped
/// (`overflow`): 4096 full-size frames are 6 MiB, and at 200 ms of latency a direction
/// still carries 30 MB/s, more than a TCG guest sends.
const DELAY_LINE_FRAMES: usize = 4096;
/// Frames waiting for a guest that is not reading fast enough (its socket queue is
/// full) before further frames for it are dropped (`overflow`), as a real switch
/// port's buffer. 4096 full-size frames (6 MiB) hold a Linux TCP flow's largest window
/// (`tcp_rmem` max, 6 MiB), so one flow to a live guest loses nothing here.
const BACKLOG_FRAMES: usize = 4096;
/// The longest the thread sleeps with nothing to do; only a safety net, since a stop
/// or a new port wakes it through the eventfd.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Locks a mutex whose holder may have panicked: the data stays usable (rules,
/// counters and captures are valid after any partial update).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared between the [`Switch`](super::Switch) handle and its thread.
pub(crate) struct Shared {
    pub(crate) network: String,
    /// Bumped (under `control`'s lock) on every change the thread must pick up; the
    /// thread compares it before every frame.
    pub(crate) generation: AtomicU64,
    pub(crate) control: Mutex<Control>,
    pub(crate) capture: Mutex<Option<PcapWriter>>,
    /// Lets the thread skip the capture lock for every frame when nothing is captured.
    pub(crate) capturing: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) wake: EventFd,
    /// Why the thread ended early, if it did.
    pub(crate) failure: Mutex<Option<String>>,
}

/// What the handle changes and the thread adopts.
pub(crate) struct Control {
    pub(crate) rules: Rules,
    pub(crate) seed: u64,
    /// Bumped by every reseed: the thread then restarts every direction's stream.
    pub(crate) seed_epoch: u64,
    /// Ports added since the thread last looked, in index order.
    pub(crate) new_ports: Vec<PortIo>,
}

/// A port's sockets, made by the handle (so that errors reach the caller) and then
/// owned by the thread.
pub(crate) struct PortIo {
    /// Bound at the switch path, never connected: any QEMU incarnation can send to it.
    pub(crate) rx: UnixDatagram,
    /// Unbound, connected to the VM path on first use: gives `EAGAIN` plus a `POLLOUT`
    /// wake-up when the guest's queue is full.
    pub(crate) tx: UnixDatagram,
    pub(crate) vm_path: PathBuf,
    pub(crate) counters: Arc<PortCounters>,
}

/// Why a copy of a frame was not delivered; counted on the port that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    Partition = 0,
    Loss = 1,
    Overflow = 2,
    Undeliverable = 3,
    Invalid = 4,
}

/// A port's counters, updated by the thread and read by [`Switch::stats`](super::Switch::stats).
#[derive(Debug, Default)]
pub(crate) struct PortCounters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    dropped: [AtomicU64; 5],
}

impl PortCounters {
    fn sent_by_guest(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn delivered_to_guest(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PortStats {
        let dropped = |reason: DropReason| self.dropped[reason as usize].load(Ordering::Relaxed);
        PortStats {
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            dropped_partition: dropped(DropReason::Partition),
            dropped_loss: dropped(DropReason::Loss),
            dropped_overflow: dropped(DropReason::Overflow),
            dropped_undeliverable: dropped(DropReason::Undeliverable),
            dropped_invalid: dropped(DropReason::Invalid),
        }
    }
}

/// The thread's body: serves until told to stop, recording why if it ends otherwise.
pub(crate) fn run(shared: Arc<Shared>) {
    let mut engine = Engine::new(Arc::clone(&shared));
    if let Err(error) = engine.serve() {
        *lock(&shared.failure) = Some(format!("poll or receive failed: {error}"));
    }
}

/// What became of one attempt to hand a frame to a guest.
enum SendOutcome {
    Sent,
    /// The guest's queue is full; try again on `POLLOUT`.
    Busy,
    /// Nobody is bound at the VM path (QEMU not started or gone), or the send failed.
    Undeliverable,
}

struct EnginePort {
    io: PortIo,
    connected: bool,
    /// Frames (and their sender) waiting for the guest's queue to drain, in order.
    backlog: VecDeque<(usize, Vec<u8>)>,
}

impl EnginePort {
    fn send(&mut self, frame: &[u8]) -> SendOutcome {
        if !self.connected && !self.connect() {
            return SendOutcome::Undeliverable;
        }
        match self.io.tx.send(frame) {
            Ok(_) => SendOutcome::Sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => SendOutcome::Busy,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotConnected
                ) =>
            {
                // The QEMU we were connected to has exited; a new one (a reboot or a
                // fixture resume) may be bound at the same path by now.
                self.connected = false;
                if !self.connect() {
                    return SendOutcome::Undeliverable;
                }
                match self.io.tx.send(frame) {
                    Ok(_) => SendOutcome::Sent,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => SendOutcome::Busy,
                    Err(_) => SendOutcome::Undeliverable,
                }
            }
            Err(_) => SendOutcome::Undeliverable,
        }
    }

    fn connect(&mut self) -> bool {
        self.connected = self.io.tx.connect(&self.io.vm_path).is_ok();
        self.connected
    }
}

/// A frame waiting in a delay line.
struct Delayed {
    due: Instant,
    frame: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PollRole {
    Wake,
    Receive(usize),
    Drain(usize),
}

struct Engine {
    shared: Arc<Shared>,
    ports: Vec<EnginePort>,
    /// Per port, the same `Arc`s as in `PortIo`, apart so drops can be counted on the
    /// sender while another port is borrowed.
    counters: Vec<Arc<PortCounters>>,
    generation: u64,
    seed: u64,
    seed_epoch: u64,
    /// `ports × ports`, indexed `from * ports + to`.
    table: Vec<PairRule>,
    streams: Vec<SplitMix64>,
    lines: Vec<VecDeque<Delayed>>,
    /// Frames in all delay lines together.
    delayed: usize,
    macs: HashMap<MacAddr, usize>,
    pollfds: Vec<libc::pollfd>,
    poll_roles: Vec<PollRole>,
    flood: Vec<usize>,
}

impl Engine {
    fn new(shared: Arc<Shared>) -> Engine {
        Engine {
            shared,
            ports: Vec::new(),
            counters: Vec::new(),
            generation: u64::MAX,
            seed: 0,
            seed_epoch: u64::MAX,
            table: Vec::new(),
            streams: Vec::new(),
            lines: Vec::new(),
            delayed: 0,
            macs: HashMap::new(),
            pollfds: Vec::new(),
            poll_roles: Vec::new(),
            flood: Vec::new(),
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut batch = RecvBatch::new();
        while !self.shared.stop.load(Ordering::Acquire) {
            self.sync();
            let now = Instant::now();
            self.release_due(now);
            let wait = match self.next_due() {
                Some(due) => due.saturating_duration_since(now),
                None => IDLE_WAIT,
            };
            self.prepare_poll();
            // A capture is flushed when the switch is about to sleep, so the file is
            // complete whenever traffic pauses, without a write per busy iteration.
            let may_idle = !wait.is_zero() && self.shared.capturing.load(Ordering::Relaxed);
            let ready = if may_idle {
                self.poll(Duration::ZERO)?
            } else {
                0
            };
            if ready == 0 {
                if may_idle {
                    self.flush_capture();
                }
                self.poll(wait)?;
            }
            for entry in 0..self.pollfds.len() {
                let revents = self.pollfds[entry].revents;
                if revents == 0 {
                    continue;
                }
                match self.poll_roles[entry] {
                    PollRole::Wake => self.shared.wake.drain(),
                    PollRole::Receive(port) => self.receive(port, &mut batch)?,
                    PollRole::Drain(port) => self.drain_backlog(port),
                }
            }
        }
        Ok(())
    }

    /// `ppoll` on the prepared descriptors; an interrupted wait counts as nothing ready.
    fn poll(&mut self, wait: Duration) -> io::Result<usize> {
        match sys::poll(&mut self.pollfds, wait) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            ready => ready,
        }
    }

    /// Adopts new ports, rules and seed if the handle changed anything.
    fn sync(&mut self) {
        if self.shared.generation.load(Ordering::Acquire) == self.generation {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let mut control = lock(&shared.control);
        self.generation = shared.generation.load(Ordering::Acquire);
        let before = self.ports.len();
        for io in control.new_ports.drain(..) {
            self.counters.push(Arc::clone(&io.counters));
            self.ports.push(EnginePort {
                io,
                connected: false,
                backlog: VecDeque::new(),
            });
        }
        let after = self.ports.len();
        if control.seed_epoch != self.seed_epoch {
            self.seed_epoch = control.seed_epoch;
            self.seed = control.seed;
            self.streams = Vec::new();
        }
        let seed = self.seed;
        let streams_before = if self.streams.is_empty() { 0 } else { before };
        self.streams = regrid(
            std::mem::take(&mut self.streams),
            streams_before,
            after,
            |from, to| SplitMix64::for_direction(seed, from, to),
        );
        self.lines = regrid(std::mem::take(&mut self.lines), before, after, |_, _| {
            VecDeque::new()
        });
        self.table = control.rules.table(after);
    }

    fn receive(&mut self, port: usize, batch: &mut RecvBatch) -> io::Result<()> {
        let fd = self.ports[port].io.rx.as_raw_fd();
        let count = batch.receive(fd)?;
        let now = Instant::now();
        for slot in 0..count {
            self.ingress(port, batch.datagram(slot), now);
        }
        Ok(())
    }

    /// One frame from the guest on port `from`.
    fn ingress(&mut self, from: usize, datagram: Datagram<'_>, now: Instant) {
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            self.sync();
        }
        let counters = &self.counters[from];
        let frame = match datagram {
            Datagram::Truncated { len } => {
                counters.sent_by_guest(len);
                counters.dropped(DropReason::Invalid);
                return;
            }
            Datagram::Frame(frame) => frame,
        };
        counters.sent_by_guest(frame.len());
        if self.shared.capturing.load(Ordering::Relaxed) {
            if let Some(writer) = lock(&self.shared.capture).as_mut() {
                writer.record(SystemTime::now(), frame);
            }
        }
        let Some((destination, source)) = MacAddr::addresses_of(frame) else {
            counters.dropped(DropReason::Invalid);
            return;
        };
        if !source.is_group() && self.macs.get(&source) != Some(&from) {
            self.macs.insert(source, from);
        }
        let known = if destination.is_group() {
            None
        } else {
            self.macs.get(&destination).copied()
        };
        match known {
            // Both ends behind one port: nothing to forward.
            Some(to) if to == from => {}
            Some(to) => self.forward(from, to, frame, now),
            None => {
                let mut flood = std::mem::take(&mut self.flood);
                flood.clear();
                flood.extend((0..self.ports.len()).filter(|&to| to != from));
                for &to in &flood {
                    self.forward(from, to, frame, now);
                }
                self.flood = flood;
            }
        }
    }

    /// Applies the pair's rule to one copy of a frame.
    fn forward(&mut self, from: usize, to: usize, frame: &[u8], now: Instant) {
        let pair = from * self.ports.len() + to;
        let rule = self.table[pair];
        if rule.partitioned {
            self.counters[from].dropped(DropReason::Partition);
            return;
        }
        let impairment = rule.impairment;
        if impairment.loss > 0.0 && self.streams[pair].next_f64() < impairment.loss {
            self.counters[from].dropped(DropReason::Loss);
            return;
        }
        let line_empty = self.lines[pair].is_empty();
        if !impairment.delays() && line_empty {
            self.egress(from, to, Cow::Borrowed(frame));
            return;
        }
        if self.lines[pair].len() >= DELAY_LINE_FRAMES {
            self.counters[from].dropped(DropReason::Overflow);
            return;
        }
        let delay = if impairment.jitter.is_zero() {
            impairment.latency
        } else {
            let offset =
                (2.0 * self.streams[pair].next_f64() - 1.0) * impairment.jitter.as_secs_f64();
            Duration::from_secs_f64((impairment.latency.as_secs_f64() + offset).max(0.0))
        };
        let line = &mut self.lines[pair];
        // Never due before the frame ahead of it: jitter must not reorder a direction.
        let due = match line.back() {
            Some(last) => (now + delay).max(last.due),
            None => now + delay,
        };
        line.push_back(Delayed {
            due,
            frame: frame.to_vec(),
        });
        self.delayed += 1;
    }

    /// Delivers what has come due in every delay line, re-checking partitions so that
    /// nothing crosses a partition set while it waited.
    fn release_due(&mut self, now: Instant) {
        if self.delayed == 0 {
            return;
        }
        let ports = self.ports.len();
        for pair in 0..self.lines.len() {
            while self.lines[pair].front().is_some_and(|head| head.due <= now) {
                let Some(Delayed { frame, .. }) = self.lines[pair].pop_front() else {
                    break;
                };
                self.delayed -= 1;
                let (from, to) = (pair / ports, pair % ports);
                if self.table[pair].partitioned {
                    self.counters[from].dropped(DropReason::Partition);
                } else {
                    self.egress(from, to, Cow::Owned(frame));
                }
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        if self.delayed == 0 {
            return None;
        }
        self.lines
            .iter()
            .filter_map(|line| line.front().map(|head| head.due))
            .min()
    }

    /// Hands a frame to the guest on port `to`, behind whatever already waits for it.
    fn egress(&mut self, from: usize, to: usize, frame: Cow<'_, [u8]>) {
        let port = &mut self.ports[to];
        let outcome = if port.backlog.is_empty() {
            port.send(&frame)
        } else {
            SendOutcome::Busy
        };
        match outcome {
            SendOutcome::Sent => self.counters[to].delivered_to_guest(frame.len()),
            SendOutcome::Busy if port.backlog.len() < BACKLOG_FRAMES => {
                port.backlog.push_back((from, frame.into_owned()))
            }
            SendOutcome::Busy => self.counters[from].dropped(DropReason::Overflow),
            SendOutcome::Undeliverable => self.counters[from].dropped(DropReason::Undeliverable),
        }
    }

    /// Sends a port's backlog until the guest's queue is full again.
    fn drain_backlog(&mut self, to: usize) {
        let port = &mut self.ports[to];
        while let Some((from, frame)) = port.backlog.pop_front() {
            match port.send(&frame) {
                SendOutcome::Sent => self.counters[to].delivered_to_guest(frame.len()),
                SendOutcome::Busy => {
                    port.backlog.push_front((from, frame));
                    return;
                }
                SendOutcome::Undeliverable => {
                    self.counters[from].dropped(DropReason::Undeliverable)
                }
            }
        }
    }

    fn prepare_poll(&mut self) {
        self.pollfds.clear();
        self.poll_roles.clear();
        let entry = |fd: i32, events: i16| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        self.pollfds
            .push(entry(self.shared.wake.as_raw_fd(), libc::POLLIN));
        self.poll_roles.push(PollRole::Wake);
        for (index, port) in self.ports.iter().enumerate() {
            self.pollfds
                .push(entry(port.io.rx.as_raw_fd(), libc::POLLIN));
            self.poll_roles.push(PollRole::Receive(index));
            if !port.backlog.is_empty() {
                self.pollfds
                    .push(entry(port.io.tx.as_raw_fd(), libc::POLLOUT));
                self.poll_roles.push(PollRole::Drain(index));
            }
        }
    }

    fn flush_capture(&self) {
        if let Some(writer) = lock(&self.shared.capture).as_mut() {
            writer.flush_if_needed();
        }
    }
}

/// Grows a `before × before` table to `after × after`, keeping every existing entry at
/// its (from, to) and making the new ones with `make`.
fn regrid<T>(
    old: Vec<T>,
    before: usize,
    after: usize,
    mut make: impl FnMut(usize, usize) -> T,
) -> Vec<T> {
    if before == after && old.len() == after * after {
        return old;
    }
    let mut old: Vec<Option<T>> = old.into_iter().map(Some).collect();
    let mut grown = Vec::with_capacity(after * after);
    for from in 0..after {
        for to in 0..after {
            let kept = (from < before && to < before)
                .then(|| old.get_mut(from * before + to).and_then(Option::take))
                .flatten();
            grown.push(kept.unwrap_or_else(|| make(from, to)));
        }
    }
    grown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regrid_keeps_entries_at_their_pairs() {
        let old = vec![(0, 0), (0, 1), (1, 0), (1, 1)];
        let grown = regrid(old, 2, 3, |from, to| (from + 10, to + 10));
        assert_eq!(
            grown,
            vec![
                (0, 0),
                (0, 1),
                (10, 12),
                (1, 0),
                (1, 1),
                (11, 12),
                (12, 10),
                (12, 11),
                (12, 12)
            ]
        );
        let fresh: Vec<(usize, usize)> = regrid(Vec::new(), 0, 2, |f, t| (f, t));
        assert_eq!(fresh, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
    }
}
