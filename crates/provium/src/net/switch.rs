//! The [`Switch`] handle: one per network; creates ports (socket pairs and QEMU
//! arguments), changes rules, reads stats, captures, and stops its thread when dropped.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::addr::{MacAddr, Subnet, MAX_GUESTS};
use super::engine::{self, lock, Control, PortCounters, PortIo, Shared};
use super::options::{check_loss, Impairment};
use super::pcap::PcapWriter;
use super::prng::SplitMix64;
use super::rules::Rules;
use super::sys::EventFd;
use super::NetError;

/// How long stopping the switch thread may take. The thread never blocks on anything
/// but `ppoll`, which the stop wakes, so this only matters if it is wedged.
pub const STOP_DEADLINE: Duration = Duration::from_secs(2);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// How to build a switch.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// The network's name, used in errors and the thread's name.
    pub network: String,
    /// An existing private directory (the run directory, 0700) for the port sockets.
    pub dir: PathBuf,
    /// From the run's [`SubnetAllocator`](super::SubnetAllocator).
    pub subnet: Subnet,
    /// Seed for loss and jitter; `None` picks one from the clock ([`Switch::seed`]
    /// tells which, so a run can be repeated).
    pub seed: Option<u64>,
}

/// One guest NIC's attachment to the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Position on the switch; the guest's address is the subnet's `index`th.
    pub index: usize,
    /// The VM's name; ports are looked up by it.
    pub vm: String,
    pub mac: MacAddr,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Where the switch listens; QEMU's `remote.path`.
    pub switch_path: PathBuf,
    /// Where QEMU binds; QEMU's `local.path`.
    pub vm_path: PathBuf,
}

impl Port {
    /// The `-netdev` value for a netdev named `id`.
    pub fn netdev_arg(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            qemu_option_value(&self.vm_path),
            qemu_option_value(&self.switch_path)
        )
    }

    /// The `-device` value: a virtio NIC with the port's MAC on netdev `id`. No option
    /// ROM: Provium boots kernels directly, and the ROM costs boot time.
    pub fn device_arg(&self, id: &str) -> String {
        format!("virtio-net-pci,netdev={id},mac={},romfile=", self.mac)
    }

    /// `-netdev …` and `-device …` for one NIC.
    pub fn qemu_args(&self, id: &str) -> Vec<String> {
        vec![
            "-netdev".to_string(),
            self.netdev_arg(id),
            "-device".to_string(),
            self.device_arg(id),
        ]
    }
}

/// A path as a QEMU option value: commas are doubled.
fn qemu_option_value(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// A port's counters, from the guest's point of view. Drops are counted on the port
/// whose guest sent the frame, one per copy not delivered (a flooded frame can be
/// delivered to one port and dropped for another).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames (and bytes) the guest sent into the switch.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames (and bytes) the switch delivered to the guest.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Dropped by a partition.
    pub dropped_partition: u64,
    /// Dropped by random loss.
    pub dropped_loss: u64,
    /// Dropped because a delay line or the receiving guest's backlog was full.
    pub dropped_overflow: u64,
    /// Dropped because the receiving guest's QEMU was not there (not booted, exited).
    pub dropped_undeliverable: u64,
    /// Not an Ethernet frame (shorter than its header, or longer than QEMU sends).
    pub dropped_invalid: u64,
}

impl PortStats {
    /// Every drop, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_partition
            + self.dropped_loss
            + self.dropped_overflow
            + self.dropped_undeliverable
            + self.dropped_invalid
    }
}

/// An Ethernet switch for one network, served by its own thread. Dropping it stops the
/// thread and removes the port sockets (QEMU's too).
pub struct Switch {
    shared: Arc<Shared>,
    subnet: Subnet,
    dir: PathBuf,
    ports: Mutex<Vec<(Port, Arc<PortCounters>)>>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the thread ends, however it ends.
    exited: Mutex<Receiver<()>>,
}

impl Switch {
    /// Starts the switch thread; ports are added with [`Switch::add_port`].
    pub fn new(config: SwitchConfig) -> Result<Switch, NetError> {
        let start_error = |source| NetError::Start {
            network: config.network.clone(),
            source,
        };
        let wake = EventFd::new().map_err(start_error)?;
        let seed = config.seed.unwrap_or_else(seed_from_clock);
        let shared = Arc::new(Shared {
            network: config.network.clone(),
            generation: AtomicU64::new(0),
            control: Mutex::new(Control {
                rules: Rules::default(),
                seed,
                seed_epoch: 0,
                new_ports: Vec::new(),
            }),
            capture: Mutex::new(None),
            capturing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake,
            failure: Mutex::new(None),
        });
        let (exit_signal, exited) = mpsc::channel::<()>();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            // Linux shows 15 bytes of it; a NUL would make the name invalid.
            .name(format!("net-{}", config.network.replace('\0', "?")))
            .spawn(move || {
                let _exit_signal = exit_signal;
                engine::run(thread_shared);
            })
            .map_err(start_error)?;
        Ok(Switch {
            shared,
            subnet: config.subnet,
            dir: config.dir,
            ports: Mutex::new(Vec::new()),
            thread: Some(thread),
            exited: Mutex::new(exited),
        })
    }

    pub fn network(&self) -> &str {
        &self.shared.network
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The seed loss and jitter draw from now.
    pub fn seed(&self) -> u64 {
        lock(&self.shared.control).seed
    }

    /// Attaches VM `vm`: binds the switch's socket and returns where QEMU should bind
    /// its own, with the guest's MAC and address (the next free `.2`, `.3`, …).
    pub fn add_port(&self, vm: &str) -> Result<Port, NetError> {
        self.check_running()?;
        let network = self.network().to_string();
        let mut ports = lock(&self.ports);
        if ports.iter().any(|(port, _)| port.vm == vm) {
            return Err(NetError::AlreadyAttached {
                network,
                vm: vm.to_string(),
            });
        }
        let index = ports.len();
        let (Some(address), Some(mac)) = (self.subnet.guest(index), self.subnet.guest_mac(index))
        else {
            return Err(NetError::NetworkFull {
                network,
                vm: vm.to_string(),
                max: MAX_GUESTS,
            });
        };
        let stem = format!("net{}-{}", self.subnet.index(), index);
        let switch_path = self.dir.join(format!("{stem}.sw"));
        let vm_path = self.dir.join(format!("{stem}.vm"));
        for path in [&switch_path, &vm_path] {
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(NetError::PathTooLong {
                    network,
                    vm: vm.to_string(),
                    path: path.clone(),
                    len,
                    max: MAX_SOCKET_PATH,
                });
            }
        }
        let socket_error = |path: &Path| {
            let (network, vm, path) = (network.clone(), vm.to_string(), path.to_path_buf());
            move |source| NetError::Socket {
                network,
                vm,
                path,
                source,
            }
        };
        remove_socket(&switch_path).map_err(socket_error(&switch_path))?;
        let rx = UnixDatagram::bind(&switch_path).map_err(socket_error(&switch_path))?;
        let tx = UnixDatagram::unbound().map_err(socket_error(&vm_path))?;
        rx.set_nonblocking(true)
            .and_then(|()| tx.set_nonblocking(true))
            .map_err(socket_error(&switch_path))?;
        let counters = Arc::new(PortCounters::default());
        let port = Port {
            index,
            vm: vm.to_string(),
            mac,
            address,
            prefix_len: self.subnet.prefix_len(),
            switch_path,
            vm_path: vm_path.clone(),
        };
        ports.push((port.clone(), Arc::clone(&counters)));
        self.change(|control| {
            control.new_ports.push(PortIo {
                rx,
                tx,
                vm_path,
                counters,
            })
        });
        // The thread must start polling the new socket now, not at its next wake-up.
        self.shared.wake.wake();
        Ok(port)
    }

    /// The port of VM `vm`.
    pub fn port(&self, vm: &str) -> Result<Port, NetError> {
        self.find(vm, |port, _| port.clone())
    }

    /// Every port, in index order.
    pub fn ports(&self) -> Vec<Port> {
        lock(&self.ports)
            .iter()
            .map(|(port, _)| port.clone())
            .collect()
    }

    /// Drops every frame between `a` and `b`, both ways.
    pub fn partition(&self, a: &str, b: &str) -> Result<(), NetError> {
        let (a, b) = self.pair(a, b, "a partition")?;
        self.change(|control| {
            control.rules.partitions.insert((a, b));
            control.rules.partitions.insert((b, a));
        });
        Ok(())
    }

    /// Drops every frame from `from` to `to`; the other way stays open.
    pub fn partition_one_way(&self, from: &str, to: &str) -> Result<(), NetError> {
        let pair = self.pair(from, to, "a partition")?;
        self.change(|control| {
            control.rules.partitions.insert(pair);
        });
        Ok(())
    }

    /// Removes every partition (impairments stay).
    pub fn heal(&self) -> Result<(), NetError> {
        self.check_running()?;
        self.change(|control| control.rules.partitions.clear());
        Ok(())
    }

    /// Sets the impairment of every direction without one of its own.
    pub fn impair(&self, impairment: Impairment) -> Result<(), NetError> {
        self.check_running()?;
        check_loss(self.network(), impairment.loss)?;
        self.change(|control| control.rules.segment = impairment);
        Ok(())
    }

    /// Sets the impairment of frames from `from` to `to`, replacing the segment's for
    /// that direction (an all-zero impairment makes the direction clean).
    pub fn impair_direction(
        &self,
        from: &str,
        to: &str,
        impairment: Impairment,
    ) -> Result<(), NetError> {
        let pair = self.pair(from, to, "a directed impairment")?;
        check_loss(self.network(), impairment.loss)?;
        self.change(|control| {
            control.rules.directed.insert(pair, impairment);
        });
        Ok(())
    }

    /// Removes every impairment, segment-wide and per direction (partitions stay).
    pub fn clear_impairments(&self) -> Result<(), NetError> {
        self.check_running()?;
        self.change(|control| {
            control.rules.segment = Impairment::default();
            control.rules.directed.clear();
        });
        Ok(())
    }

    /// Restarts every direction's loss and jitter draws from `seed`.
    pub fn reseed(&self, seed: u64) -> Result<(), NetError> {
        self.check_running()?;
        self.change(|control| {
            control.seed = seed;
            control.seed_epoch += 1;
        });
        Ok(())
    }

    /// Records every frame entering the switch from now on into a new pcap file at
    /// `path`, closing any earlier capture.
    pub fn capture(&self, path: &Path) -> Result<(), NetError> {
        self.check_running()?;
        let writer = PcapWriter::create(path).map_err(|source| NetError::Capture {
            network: self.network().to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        let previous = {
            let mut capture = lock(&self.shared.capture);
            self.shared.capturing.store(true, Ordering::Relaxed);
            capture.replace(writer)
        };
        match previous {
            Some(previous) => self.finish_capture(previous).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Ends the capture, if any, with every frame recorded so far in the file; returns
    /// its path.
    pub fn stop_capture(&self) -> Result<Option<PathBuf>, NetError> {
        let writer = {
            let mut capture = lock(&self.shared.capture);
            self.shared.capturing.store(false, Ordering::Relaxed);
            capture.take()
        };
        writer.map(|w| self.finish_capture(w)).transpose()
    }

    /// The counters of VM `vm`'s port.
    pub fn stats(&self, vm: &str) -> Result<PortStats, NetError> {
        self.find(vm, |_, counters| counters.snapshot())
    }

    /// Stops the thread and removes the sockets, reporting a thread that would not stop
    /// or a capture that could not be written. Dropping the switch does the same
    /// silently.
    pub fn shutdown(mut self) -> Result<(), NetError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), NetError> {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.wake();
        let stopped = match lock(&self.exited).recv_timeout(STOP_DEADLINE) {
            Err(RecvTimeoutError::Timeout) => Err(NetError::StopTimeout {
                network: self.network().to_string(),
                deadline: STOP_DEADLINE,
            }),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let joined = self.thread.take().map(JoinHandle::join);
                match joined {
                    Some(Err(_)) => Err(self.stopped_error("it panicked")),
                    _ => Ok(()),
                }
            }
        };
        let captured = self.stop_capture().map(|_| ());
        for (port, _) in lock(&self.ports).iter() {
            for path in [&port.switch_path, &port.vm_path] {
                // Nothing else can be done about a socket file that will not go.
                let _ = remove_socket(path);
            }
        }
        stopped.and(captured)
    }

    fn finish_capture(&self, writer: PcapWriter) -> Result<PathBuf, NetError> {
        let path = writer.path().to_path_buf();
        writer.finish().map_err(|source| NetError::Capture {
            network: self.network().to_string(),
            path,
            source,
        })
    }

    /// Applies a change the thread picks up before its next frame.
    fn change(&self, apply: impl FnOnce(&mut Control)) {
        let mut control = lock(&self.shared.control);
        apply(&mut control);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn find<T>(
        &self,
        vm: &str,
        read: impl FnOnce(&Port, &PortCounters) -> T,
    ) -> Result<T, NetError> {
        lock(&self.ports)
            .iter()
            .find(|(port, _)| port.vm == vm)
            .map(|(port, counters)| read(port, counters))
            .ok_or_else(|| NetError::NotAttached {
                network: self.network().to_string(),
                vm: vm.to_string(),
            })
    }

    /// The port indices of two different attached VMs.
    fn pair(&self, from: &str, to: &str, action: &'static str) -> Result<(usize, usize), NetError> {
        self.check_running()?;
        if from == to {
            return Err(NetError::SameVm {
                network: self.network().to_string(),
                vm: from.to_string(),
                action,
            });
        }
        let from = self.find(from, |port, _| port.index)?;
        let to = self.find(to, |port, _| port.index)?;
        Ok((from, to))
    }

    fn check_running(&self) -> Result<(), NetError> {
        match lock(&self.exited).try_recv() {
            Err(TryRecvError::Empty) => Ok(()),
            Ok(()) | Err(TryRecvError::Disconnected) => {
                let reason = lock(&self.shared.failure)
                    .clone()
                    .unwrap_or_else(|| "it exited".to_string());
                Err(self.stopped_error(&reason))
            }
        }
    }

    fn stopped_error(&self, reason: &str) -> NetError {
        NetError::Stopped {
            network: self.network().to_string(),
            reason: reason.to_string(),
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        // `shutdown` has already stopped (or tried to stop) the thread otherwise.
        if !self.shared.stop.load(Ordering::Acquire) {
            let _ = self.stop();
        }
    }
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("network", &self.shared.network)
            .field("subnet", &self.subnet)
            .field("dir", &self.dir)
            .field("ports", &self.ports())
            .finish()
    }
}

/// Removes a socket file left by an earlier switch or QEMU; absent is fine.
fn remove_socket(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A seed for runs that did not ask for one: the clock and the process id, mixed.
fn seed_from_clock() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    SplitMix64::new(nanos ^ u64::from(std::process::id()) << 32).next_u64()
}
