//! The VM resource pool: memory/CPU gating for VM boots. A low-level module: the run
//! owns the pool, files and VM starts take leases from it, reports show its mode.
//!
//! Every running test file registers as a participant ([`Pool::enter_file`]); each VM
//! boot takes a [`Lease`] that returns its share when dropped. Because the pool knows
//! which file holds what and which files are blocked, it can tell a wait that will end
//! from a circular wait that never will, and fails the latter instead of hanging.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How VM boots are gated (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// Gate each boot on `/proc/meminfo` MemAvailable minus memory promised to VMs
    /// still booting, keeping a host reserve.
    Auto,
    /// A fixed budget from `--mem` / `--cpus`; `None` means that dimension is unlimited.
    Fixed {
        memory_mib: Option<u64>,
        cpus: Option<u32>,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("invalid size '{input}': expected a number of MiB or a number with an M or G suffix (e.g. 512M, 4G)")]
    Malformed { input: String },
    #[error("invalid size '{input}': zero is not a size; give at least 1M")]
    Zero { input: String },
    #[error("invalid size '{input}': too large")]
    TooLarge { input: String },
}

/// Parses `512M`, `4G`, `2048` (bare = MiB) into MiB.
pub fn parse_size_mib(input: &str) -> Result<u64, SizeError> {
    let owned = || input.to_string();
    let trimmed = input.trim();
    let (digits, multiplier) = match trimmed.char_indices().last() {
        Some((i, 'M' | 'm')) => (&trimmed[..i], 1),
        Some((i, 'G' | 'g')) => (&trimmed[..i], 1024),
        _ => (trimmed, 1),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Malformed { input: owned() })?;
    if value == 0 {
        return Err(SizeError::Zero { input: owned() });
    }
    value
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::TooLarge { input: owned() })
}

/// Memory kept free for the host in auto mode (SPEC §4: a 1.5 GB reserve).
pub const AUTO_RESERVE_MIB: u64 = 1536;

/// How often a blocked boot re-checks the pool even when nothing in the run changed:
/// in auto mode memory can free up outside Provium.
const RECHECK_INTERVAL: Duration = Duration::from_millis(250);

/// How long an auto-mode boot keeps waiting for memory to free up outside the run once
/// nothing inside the run could ever satisfy it.
const AUTO_STALL_GRACE: Duration = Duration::from_secs(30);

/// Host memory figures, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_mib: u64,
    pub available_mib: u64,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("cannot read memory figures from {path}: {reason}")]
pub struct MemInfoError {
    pub path: PathBuf,
    pub reason: String,
}

/// Where auto mode learns how much memory the host has free; injectable for tests.
pub trait MemInfoSource: Send + Sync {
    fn read(&self) -> Result<MemInfo, MemInfoError>;
}

/// Reads `MemTotal` and `MemAvailable` from a meminfo file (normally `/proc/meminfo`).
#[derive(Debug, Clone)]
pub struct ProcMemInfo {
    path: PathBuf,
}

impl ProcMemInfo {
    pub fn new() -> Self {
        Self::at("/proc/meminfo")
    }

    pub fn at(path: impl AsRef<Path>) -> Self {
        ProcMemInfo {
            path: path.as_ref().to_path_buf(),
        }
    }
}

impl Default for ProcMemInfo {
    fn default() -> Self {
        Self::new()
    }
}

impl MemInfoSource for ProcMemInfo {
    fn read(&self) -> Result<MemInfo, MemInfoError> {
        let err = |reason: String| MemInfoError {
            path: self.path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&self.path).map_err(|e| err(e.to_string()))?;
        parse_meminfo(&text).ok_or_else(|| err("no MemTotal/MemAvailable lines in kB".to_string()))
    }
}

/// Extracts `MemTotal` and `MemAvailable` (given in kB) from meminfo text, in MiB.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib / 1024)
        })
    };
    Some(MemInfo {
        total_mib: field("MemTotal")?,
        available_mib: field("MemAvailable")?,
    })
}

/// Tunables; the defaults are what a run uses, tests shorten the waits.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Auto mode: memory never handed to VMs.
    pub reserve_mib: u64,
    /// Upper bound on how long a blocked boot sleeps before re-checking.
    pub recheck_interval: Duration,
    /// Auto mode: how long to wait for memory to free up outside the run once nothing
    /// inside the run could satisfy a request.
    pub auto_stall_grace: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            reserve_mib: AUTO_RESERVE_MIB,
            recheck_interval: RECHECK_INTERVAL,
            auto_stall_grace: AUTO_STALL_GRACE,
        }
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("{file}: {what} asks for {request}, more than {limit}; it can never boot (lower its memory/cpus or raise --mem/--cpus)")]
    TooLarge {
        file: String,
        what: String,
        request: String,
        limit: String,
    },
    /// `evidence` gives the pool's budget, what is free and what every file holds.
    #[error("{file}: cannot boot {what} ({request}): circular wait: it can only fit into resources held by files that are themselves blocked waiting (this one included), each for resources only the others hold, so none could ever go on; failing this request so the run can progress. {evidence}")]
    Deadlock {
        file: String,
        what: String,
        request: String,
        evidence: String,
    },
    /// `evidence` gives the host's memory figures, the wait and what every file holds.
    #[error("{file}: cannot boot {what} ({request}): the host lacks the memory and no VM in this run could free enough of it. {evidence}")]
    Stalled {
        file: String,
        what: String,
        request: String,
        evidence: String,
    },
    /// The file had to stop (its time ran out, the run was interrupted) while waiting.
    #[error("{file}: stopped waiting for resources for {what}: {reason}")]
    Stopped {
        file: String,
        what: String,
        reason: String,
    },
    #[error("{file}: cannot boot {what}: {source}")]
    MemInfo {
        file: String,
        what: String,
        #[source]
        source: MemInfoError,
    },
}

/// What the pool has handed out right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Memory of every live lease.
    pub memory_mib: u64,
    pub cpus: u64,
    /// Memory of leases whose VM has not reported [`Lease::booted`] yet.
    pub promised_mib: u64,
    pub leases: usize,
}

/// The memory/CPU gate shared (as `Arc`) by every file of a run.
pub struct Pool {
    mode: PoolMode,
    options: PoolOptions,
    meminfo: Box<dyn MemInfoSource>,
    state: Mutex<State>,
    changed: Condvar,
    /// Auto mode: how many VMs may boot at once (see [`BootGate`]).
    boots: Option<BootGate>,
}

/// How a VM boots, which decides how much of the host's CPU its boot takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootCost {
    /// Under TCG a booting guest keeps one host core busy from start to finish.
    Emulated,
    /// Under KVM a boot is far lighter: two share a core.
    Accelerated,
}

/// Lets at most as many VMs *boot* at once as the host can serve: boot is the
/// CPU-heavy part of a VM's life under TCG, and boots that starve each other of CPU
/// all miss their deadlines together (24 boots on 2 cores: none made it). A slot is
/// held for the boot alone — never while the file waits for anything else — so the
/// gate can delay a boot but never deadlock or fail a file. Capacity is counted in
/// half cores: a TCG boot takes two units, a KVM boot one.
#[derive(Debug)]
pub struct BootGate {
    capacity: u32,
    busy: Mutex<u32>,
    freed: Condvar,
}

/// How often a boot waiting for the gate checks whether its file must stop.
const BOOT_GATE_RECHECK: Duration = Duration::from_millis(100);

impl BootGate {
    /// A gate for a host with `cores` cores.
    pub fn new(cores: usize) -> BootGate {
        BootGate {
            capacity: u32::try_from(cores.max(1) * 2).unwrap_or(u32::MAX),
            busy: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits for room for a boot of `cost`; the slot is held until the guard drops.
    pub fn enter(&self, cost: BootCost) -> Result<Booting<'_>, crate::cancel::Stop> {
        let units = match cost {
            BootCost::Emulated => 2.min(self.capacity),
            BootCost::Accelerated => 1,
        };
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy + units > self.capacity {
            crate::cancel::checkpoint()?;
            busy = self
                .freed
                .wait_timeout(busy, BOOT_GATE_RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy += units;
        Ok(Booting { gate: self, units })
    }

    /// Boots under way, in units (two per TCG boot).
    pub fn busy(&self) -> u32 {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A boot slot, returned when dropped (the boot ended, however it ended).
#[derive(Debug)]
pub struct Booting<'a> {
    gate: &'a BootGate,
    units: u32,
}

impl Drop for Booting<'_> {
    fn drop(&mut self) {
        let mut busy = self.gate.busy.lock().unwrap_or_else(|e| e.into_inner());
        *busy -= self.units;
        drop(busy);
        self.gate.freed.notify_all();
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    files: BTreeMap<u64, FileState>,
}

struct FileState {
    name: String,
    held: BTreeMap<u64, Held>,
    waiting: BTreeMap<u64, Waiting>,
}

struct Held {
    request: Request,
    what: String,
    booted: bool,
}

struct Waiting {
    request: Request,
    what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Request {
    memory_mib: u64,
    cpus: u64,
}

/// Room left for new leases; `None` is unlimited. Signed because in auto mode the host
/// can already be below the reserve.
#[derive(Debug, Clone, Copy)]
struct Free {
    memory_mib: Option<i128>,
    cpus: Option<i128>,
}

impl Free {
    fn fits(&self, request: Request) -> bool {
        self.memory_mib
            .is_none_or(|m| i128::from(request.memory_mib) <= m)
            && self.cpus.is_none_or(|c| i128::from(request.cpus) <= c)
    }

    fn give_back(&mut self, request: Request) {
        if let Some(m) = &mut self.memory_mib {
            *m += i128::from(request.memory_mib);
        }
        if let Some(c) = &mut self.cpus {
            *c += i128::from(request.cpus);
        }
    }
}

impl fmt::Display for Free {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.memory_mib {
            Some(m) => write!(f, "{}M memory", m.max(0))?,
            None => f.write_str("unlimited memory")?,
        }
        match self.cpus {
            Some(c) => write!(f, ", {}", cpus_text(c.max(0))),
            None => Ok(()),
        }
    }
}

fn cpus_text(cpus: impl Into<i128>) -> String {
    match cpus.into() {
        1 => "1 CPU".to_string(),
        n => format!("{n} CPUs"),
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M memory, {}", self.memory_mib, cpus_text(self.cpus))
    }
}

impl FileState {
    fn held_total(&self) -> Request {
        self.held
            .values()
            .fold(Request::default(), |sum, h| Request {
                memory_mib: sum.memory_mib + h.request.memory_mib,
                cpus: sum.cpus + h.request.cpus,
            })
    }

    fn describe(&self) -> String {
        let held: Vec<String> = self
            .held
            .values()
            .map(|h| format!("{} ({})", h.what, h.request))
            .collect();
        let waits: Vec<String> = self
            .waiting
            .values()
            .map(|w| format!("{} ({})", w.what, w.request))
            .collect();
        let holds = if held.is_empty() {
            "holds nothing".to_string()
        } else {
            format!("holds {}", held.join(" + "))
        };
        if waits.is_empty() {
            format!("{} {holds} and is running", self.name)
        } else {
            format!("{} {holds} and waits for {}", self.name, waits.join(" + "))
        }
    }
}

impl State {
    fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        for held in self.files.values().flat_map(|f| f.held.values()) {
            usage.memory_mib += held.request.memory_mib;
            usage.cpus += held.request.cpus;
            if !held.booted {
                usage.promised_mib += held.request.memory_mib;
            }
            usage.leases += 1;
        }
        usage
    }

    fn holdings(&self) -> String {
        let files: Vec<String> = self.files.values().map(FileState::describe).collect();
        files.join("; ")
    }

    /// Whether `requester` is part of a set of waiting files none of which can ever be
    /// satisfied. Files that are not waiting are assumed to eventually release
    /// everything they hold; a waiting file whose request fits into what would then be
    /// free is assumed to proceed and release too. Whoever is left can only be freed by
    /// each other: a circular wait.
    fn is_stuck(&self, free_now: Free, requester: u64) -> bool {
        let mut free = free_now;
        let mut pending: Vec<(u64, &FileState)> = Vec::new();
        for (&id, file) in &self.files {
            if file.waiting.is_empty() {
                free.give_back(file.held_total());
            } else {
                pending.push((id, file));
            }
        }
        loop {
            let before = pending.len();
            pending.retain(|(_, file)| {
                if file.waiting.values().any(|w| free.fits(w.request)) {
                    free.give_back(file.held_total());
                    false
                } else {
                    true
                }
            });
            if pending.len() == before {
                break;
            }
        }
        pending.iter().any(|(id, _)| *id == requester)
    }
}

impl Pool {
    /// A pool reading `/proc/meminfo` in auto mode, with the default tunables.
    pub fn new(mode: PoolMode) -> Arc<Pool> {
        Self::with_source(mode, PoolOptions::default(), Box::new(ProcMemInfo::new()))
    }

    pub fn with_source(
        mode: PoolMode,
        options: PoolOptions,
        meminfo: Box<dyn MemInfoSource>,
    ) -> Arc<Pool> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Pool {
            boots: (mode == PoolMode::Auto).then(|| BootGate::new(cores)),
            mode,
            options,
            meminfo,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    /// Waits, in auto mode, until the host can serve one more boot of `cost`; the
    /// guard is held for the boot alone. Fixed mode boots at once (its `--cpus`
    /// budget is the user's call).
    pub fn begin_boot(&self, cost: BootCost) -> Result<Option<Booting<'_>>, crate::cancel::Stop> {
        match &self.boots {
            Some(gate) => gate.enter(cost).map(Some),
            None => Ok(None),
        }
    }

    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// The pool's budget for logs, e.g. `4096M memory, 8 CPUs` (the run header prints
    /// it after `resource pool: `).
    pub fn describe(&self) -> String {
        match self.mode {
            PoolMode::Auto => format!(
                "auto (MemAvailable minus memory promised to booting VMs, keeping {}M for the host)",
                self.options.reserve_mib
            ),
            PoolMode::Fixed { memory_mib, cpus } => {
                let memory = match memory_mib {
                    Some(m) => format!("{m}M memory"),
                    None => "unlimited memory".to_string(),
                };
                let cpus = match cpus {
                    Some(c) => cpus_text(c),
                    None => "unlimited CPUs".to_string(),
                };
                format!("{memory}, {cpus}")
            }
        }
    }

    /// Registers a running test file. Dropping the slot means the file finished: any
    /// lease it still holds is released.
    pub fn enter_file(self: &Arc<Self>, name: impl Into<String>) -> FileSlot {
        let name = name.into();
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.files.insert(
            id,
            FileState {
                name: name.clone(),
                held: BTreeMap::new(),
                waiting: BTreeMap::new(),
            },
        );
        FileSlot {
            pool: Arc::clone(self),
            id,
            name,
        }
    }

    /// What is handed out right now.
    pub fn usage(&self) -> Usage {
        self.lock().usage()
    }

    /// Blocks until `memory_mib` and `cpus` fit, then takes them for `what` (a VM name
    /// for messages). Fails at once when the request can never fit, and when `file` is
    /// part of a circular wait: every waiting file it depends on is itself waiting for
    /// resources only the others hold (fixed mode fails at once; auto mode first waits
    /// [`PoolOptions::auto_stall_grace`] for memory to free up outside the run).
    ///
    /// # Panics
    /// When `file` was registered with another pool (a programming error).
    pub fn acquire(
        &self,
        file: &FileSlot,
        memory_mib: u64,
        cpus: u32,
        what: &str,
    ) -> Result<Lease, PoolError> {
        assert!(
            std::ptr::eq(Arc::as_ptr(&file.pool), self),
            "FileSlot '{}' belongs to another pool",
            file.name
        );
        let request = Request {
            memory_mib,
            cpus: u64::from(cpus),
        };
        self.check_can_ever_fit(file, request, what)?;

        let mut state = self.lock();
        state.next_id += 1;
        let ticket = state.next_id;
        let mut stalled_since: Option<Instant> = None;
        let outcome = loop {
            let free = match self.free(&state) {
                Ok(free) => free,
                Err(source) => {
                    break Err(PoolError::MemInfo {
                        file: file.name.clone(),
                        what: what.to_string(),
                        source,
                    })
                }
            };
            if free.fits(request) {
                break Ok(());
            }
            if let Err(stop) = crate::cancel::checkpoint() {
                break Err(PoolError::Stopped {
                    file: file.name.clone(),
                    what: what.to_string(),
                    reason: stop.to_string(),
                });
            }
            file_state(&mut state, file).waiting.insert(
                ticket,
                Waiting {
                    request,
                    what: what.to_string(),
                },
            );
            if state.is_stuck(free, file.id) {
                match self.mode {
                    PoolMode::Fixed { .. } => {
                        break Err(PoolError::Deadlock {
                            file: file.name.clone(),
                            what: what.to_string(),
                            request: request.to_string(),
                            evidence: format!(
                                "Pool: {}; free now: {free}. Files: {}",
                                self.describe(),
                                state.holdings()
                            ),
                        })
                    }
                    PoolMode::Auto => {
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.options.auto_stall_grace {
                            break Err(PoolError::Stalled {
                                file: file.name.clone(),
                                what: what.to_string(),
                                request: request.to_string(),
                                evidence: format!(
                                    "Waited {:.1}s; {}. Files: {}",
                                    since.elapsed().as_secs_f64(),
                                    self.auto_free_text(&state),
                                    state.holdings()
                                ),
                            });
                        }
                    }
                }
            } else {
                stalled_since = None;
            }
            state = self
                .changed
                .wait_timeout(state, self.options.recheck_interval)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };

        let entry = file_state(&mut state, file);
        entry.waiting.remove(&ticket);
        outcome?;
        entry.held.insert(
            ticket,
            Held {
                request,
                what: what.to_string(),
                booted: false,
            },
        );
        Ok(Lease {
            pool: Arc::clone(&file.pool),
            file: file.id,
            id: ticket,
            memory_mib,
            cpus,
        })
    }

    fn check_can_ever_fit(
        &self,
        file: &FileSlot,
        request: Request,
        what: &str,
    ) -> Result<(), PoolError> {
        let too_large = |limit: String| PoolError::TooLarge {
            file: file.name.clone(),
            what: what.to_string(),
            request: request.to_string(),
            limit,
        };
        match self.mode {
            PoolMode::Fixed { memory_mib, cpus } => {
                let memory_over = memory_mib.is_some_and(|m| request.memory_mib > m);
                let cpus_over = cpus.is_some_and(|c| request.cpus > u64::from(c));
                if memory_over || cpus_over {
                    return Err(too_large(format!("the whole pool ({})", self.describe())));
                }
            }
            PoolMode::Auto => {
                let info = self.meminfo.read().map_err(|source| PoolError::MemInfo {
                    file: file.name.clone(),
                    what: what.to_string(),
                    source,
                })?;
                let usable = info.total_mib.saturating_sub(self.options.reserve_mib);
                if request.memory_mib > usable {
                    return Err(too_large(format!(
                        "this host can ever give a VM ({}M RAM minus the {}M host reserve = {usable}M)",
                        info.total_mib, self.options.reserve_mib
                    )));
                }
            }
        }
        Ok(())
    }

    fn free(&self, state: &State) -> Result<Free, MemInfoError> {
        let usage = state.usage();
        Ok(match self.mode {
            PoolMode::Fixed { memory_mib, cpus } => Free {
                memory_mib: memory_mib.map(|m| i128::from(m) - i128::from(usage.memory_mib)),
                cpus: cpus.map(|c| i128::from(c) - i128::from(usage.cpus)),
            },
            PoolMode::Auto => {
                let info = self.meminfo.read()?;
                Free {
                    memory_mib: Some(
                        i128::from(info.available_mib)
                            - i128::from(usage.promised_mib)
                            - i128::from(self.options.reserve_mib),
                    ),
                    cpus: None,
                }
            }
        })
    }

    fn auto_free_text(&self, state: &State) -> String {
        match self.meminfo.read() {
            Ok(info) => format!(
                "MemAvailable {}M, {}M promised to booting VMs, {}M host reserve",
                info.available_mib,
                state.usage().promised_mib,
                self.options.reserve_mib
            ),
            Err(e) => e.to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, file: u64, lease: u64) {
        let mut state = self.lock();
        let removed = state
            .files
            .get_mut(&file)
            .and_then(|f| f.held.remove(&lease))
            .is_some();
        drop(state);
        if removed {
            self.changed.notify_all();
        }
    }

    fn mark_booted(&self, file: u64, lease: u64) {
        let mut state = self.lock();
        let newly = match state
            .files
            .get_mut(&file)
            .and_then(|f| f.held.get_mut(&lease))
        {
            Some(held) if !held.booted => {
                held.booted = true;
                true
            }
            _ => false,
        };
        drop(state);
        if newly {
            self.changed.notify_all();
        }
    }

    fn leave_file(&self, file: u64) {
        self.lock().files.remove(&file);
        self.changed.notify_all();
    }
}

fn file_state<'a>(state: &'a mut State, file: &FileSlot) -> &'a mut FileState {
    state
        .files
        .get_mut(&file.id)
        .expect("a FileSlot stays registered until it is dropped")
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("mode", &self.mode)
            .field("usage", &self.usage())
            .finish()
    }
}

/// A running test file's membership in the pool. One thread of execution per slot:
/// while it is blocked in [`Pool::acquire`] the pool counts the file as unable to
/// release anything.
pub struct FileSlot {
    pool: Arc<Pool>,
    id: u64,
    name: String,
}

impl FileSlot {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Shorthand for `self.pool().acquire(self, ..)`.
    pub fn acquire(&self, memory_mib: u64, cpus: u32, what: &str) -> Result<Lease, PoolError> {
        self.pool.acquire(self, memory_mib, cpus, what)
    }
}

impl fmt::Debug for FileSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSlot")
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.pool.leave_file(self.id);
    }
}

/// Memory and CPUs held by one VM; given back on drop (or when its file's slot drops).
pub struct Lease {
    pool: Arc<Pool>,
    file: u64,
    id: u64,
    memory_mib: u64,
    cpus: u32,
}

impl Lease {
    /// The VM finished booting: in auto mode its memory now shows in MemAvailable
    /// (as far as the guest touched it) and is no longer counted as promised.
    pub fn booted(&self) {
        self.pool.mark_booted(self.file, self.id);
    }

    pub fn memory_mib(&self) -> u64 {
        self.memory_mib
    }

    pub fn cpus(&self) -> u32 {
        self.cpus
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("memory_mib", &self.memory_mib)
            .field("cpus", &self.cpus)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.file, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_suffix() {
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("4G"), Ok(4096));
        assert_eq!(parse_size_mib("2048"), Ok(2048));
        assert_eq!(parse_size_mib("1g"), Ok(1024));
        assert!(parse_size_mib("").is_err());
        assert_eq!(
            parse_size_mib("0").unwrap_err().to_string(),
            "invalid size '0': zero is not a size; give at least 1M"
        );
        assert!(parse_size_mib("4T").is_err());
        assert!(parse_size_mib("-1G").is_err());
    }

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::thread;

    const TEST_DEADLINE: Duration = Duration::from_secs(20);

    fn fixed(memory_mib: Option<u64>, cpus: Option<u32>) -> Arc<Pool> {
        Pool::with_source(
            PoolMode::Fixed { memory_mib, cpus },
            fast_options(),
            Box::new(FakeMemInfo::new(0, 0)),
        )
    }

    fn fast_options() -> PoolOptions {
        PoolOptions {
            reserve_mib: AUTO_RESERVE_MIB,
            recheck_interval: Duration::from_millis(20),
            auto_stall_grace: Duration::from_millis(300),
        }
    }

    /// A meminfo the test can change while the pool runs.
    #[derive(Clone)]
    struct FakeMemInfo(Arc<Mutex<MemInfo>>);

    impl FakeMemInfo {
        fn new(total_mib: u64, available_mib: u64) -> Self {
            FakeMemInfo(Arc::new(Mutex::new(MemInfo {
                total_mib,
                available_mib,
            })))
        }

        fn set_available(&self, available_mib: u64) {
            self.0.lock().unwrap().available_mib = available_mib;
        }
    }

    impl MemInfoSource for FakeMemInfo {
        fn read(&self) -> Result<MemInfo, MemInfoError> {
            Ok(*self.0.lock().unwrap())
        }
    }

    fn auto(fake: &FakeMemInfo) -> Arc<Pool> {
        Pool::with_source(PoolMode::Auto, fast_options(), Box::new(fake.clone()))
    }

    #[test]
    fn meminfo_parses_kib_into_mib() {
        let text = "MemTotal:       24684092 kB\nMemFree:        20935944 kB\nMemAvailable:   24128608 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(MemInfo {
                total_mib: 24105,
                available_mib: 23563
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1024 kB\n"), None);
        let host = ProcMemInfo::new()
            .read()
            .expect("/proc/meminfo is readable");
        assert!(host.total_mib > 0 && host.available_mib <= host.total_mib);
        let missing = ProcMemInfo::at("/nonexistent/meminfo").read().unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/meminfo"));
    }

    #[test]
    fn describe_names_the_budget() {
        assert_eq!(
            fixed(Some(4096), Some(8)).describe(),
            "4096M memory, 8 CPUs"
        );
        assert_eq!(
            fixed(Some(512), None).describe(),
            "512M memory, unlimited CPUs"
        );
        assert_eq!(fixed(None, Some(1)).describe(), "unlimited memory, 1 CPU");
        assert!(auto(&FakeMemInfo::new(8192, 8192))
            .describe()
            .contains("1536M"));
    }

    #[test]
    fn fixed_budget_is_never_exceeded_under_contention() {
        const MEMORY: u64 = 1000;
        const CPUS: u64 = 4;
        let pool = fixed(Some(MEMORY), Some(CPUS as u32));
        let in_use_memory = Arc::new(AtomicU64::new(0));
        let in_use_cpus = Arc::new(AtomicU64::new(0));
        let max_memory = Arc::new(AtomicU64::new(0));
        let max_cpus = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = mpsc::channel();
        for worker in 0..8u64 {
            let pool = Arc::clone(&pool);
            let (in_use_memory, in_use_cpus) = (in_use_memory.clone(), in_use_cpus.clone());
            let (max_memory, max_cpus) = (max_memory.clone(), max_cpus.clone());
            let done_tx = done_tx.clone();
            thread::spawn(move || {
                let slot = pool.enter_file(format!("file{worker}.lua"));
                let mut seed = worker * 7919 + 1;
                for round in 0..25 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let memory = 100 + (seed >> 33) % 600;
                    let cpus = 1 + (seed >> 20) % CPUS;
                    let lease = slot
                        .acquire(memory, cpus as u32, &format!("vm{round}"))
                        .expect("a lone request within budget is always granted");
                    let m = in_use_memory.fetch_add(memory, Ordering::SeqCst) + memory;
                    let c = in_use_cpus.fetch_add(cpus, Ordering::SeqCst) + cpus;
                    max_memory.fetch_max(m, Ordering::SeqCst);
                    max_cpus.fetch_max(c, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(1 + seed % 3));
                    in_use_memory.fetch_sub(memory, Ordering::SeqCst);
                    in_use_cpus.fetch_sub(cpus, Ordering::SeqCst);
                    drop(lease);
                }
                done_tx.send(()).unwrap();
            });
        }
        for _ in 0..8 {
            done_rx.recv_timeout(TEST_DEADLINE).expect("a worker hung");
        }
        assert!(max_memory.load(Ordering::SeqCst) <= MEMORY);
        assert!(max_cpus.load(Ordering::SeqCst) <= CPUS);
        assert!(
            max_memory.load(Ordering::SeqCst) > 600,
            "leases never overlapped"
        );
        assert_eq!(pool.usage(), Usage::default());
    }

    #[test]
    fn oversize_requests_fail_at_once() {
        let pool = fixed(Some(512), Some(2));
        let slot = pool.enter_file("big.lua");
        let started = Instant::now();
        let err = slot.acquire(1024, 1, "vm1").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        let text = err.to_string();
        assert!(matches!(err, PoolError::TooLarge { .. }), "{text}");
        for needle in ["big.lua", "vm1", "1024M", "512M memory, 2 CPUs", "never"] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
        assert!(matches!(
            slot.acquire(256, 3, "vm2"),
            Err(PoolError::TooLarge { .. })
        ));

        let fake = FakeMemInfo::new(4096, 4096);
        let pool = auto(&fake);
        let slot = pool.enter_file("big.lua");
        let err = slot.acquire(3000, 1, "vm1").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PoolError::TooLarge { .. }), "{text}");
        assert!(
            text.contains("4096M RAM") && text.contains("2560M"),
            "{text}"
        );
        assert!(slot.acquire(2560, 1, "vm2").is_ok());
    }

    #[test]
    fn circular_wait_fails_one_requester_and_lets_the_other_proceed() {
        let pool = fixed(Some(1024), None);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (tx, rx) = mpsc::channel();
        for name in ["a.lua", "b.lua"] {
            let (pool, barrier, tx) = (Arc::clone(&pool), barrier.clone(), tx.clone());
            thread::spawn(move || {
                let slot = pool.enter_file(name);
                let first = slot.acquire(512, 1, "vm1").unwrap();
                barrier.wait();
                let second = slot.acquire(512, 1, "vm2");
                let failed = second.is_err();
                tx.send((name, second.map(|_| ()))).unwrap();
                // The loser's file ends, releasing vm1; the winner finishes with both.
                if !failed {
                    thread::sleep(Duration::from_millis(50));
                }
                drop(first);
            });
        }
        let first = rx
            .recv_timeout(TEST_DEADLINE)
            .expect("deadlock not detected");
        let second = rx
            .recv_timeout(TEST_DEADLINE)
            .expect("survivor never admitted");
        let (loser, err) = match (&first, &second) {
            ((name, Err(e)), (_, Ok(()))) => (*name, e.clone()),
            other => panic!("expected one failure then one success, got {other:?}"),
        };
        let text = err.to_string();
        assert!(matches!(err, PoolError::Deadlock { .. }), "{text}");
        assert!(text.starts_with(loser), "{text}");
        assert!(text.contains("circular wait"), "{text}");
        for needle in [
            "a.lua holds vm1",
            "b.lua holds vm1",
            "waits for vm2",
            "1024M memory",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
    }

    #[test]
    fn a_file_waiting_on_its_own_leases_fails_at_once() {
        let pool = fixed(Some(1024), None);
        let slot = pool.enter_file("greedy.lua");
        let _held = slot.acquire(768, 1, "vm1").unwrap();
        let started = Instant::now();
        let err = slot.acquire(512, 1, "vm2").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(err, PoolError::Deadlock { .. }), "{err}");
        assert!(err.to_string().contains("greedy.lua holds vm1"), "{err}");
        assert_eq!(pool.usage().memory_mib, 768);
        // The failed request no longer counts as waiting, so the file can go on.
        assert!(slot.acquire(256, 1, "vm3").is_ok());
    }

    #[test]
    fn a_wait_that_a_running_file_can_end_is_not_a_deadlock() {
        let pool = fixed(Some(1024), None);
        let runner = pool.enter_file("runner.lua");
        let held = runner.acquire(600, 1, "vm1").unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter_pool = Arc::clone(&pool);
        thread::spawn(move || {
            let slot = waiter_pool.enter_file("waiter.lua");
            tx.send(slot.acquire(1024, 1, "vm1").map(|_| ())).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "admitted while the budget was taken"
        );
        drop(held);
        assert_eq!(
            rx.recv_timeout(TEST_DEADLINE).expect("never admitted"),
            Ok(())
        );
    }

    #[test]
    fn leases_return_on_drop_and_when_their_file_ends() {
        let pool = fixed(Some(2048), Some(4));
        let slot = pool.enter_file("a.lua");
        let first = slot.acquire(512, 1, "vm1").unwrap();
        let second = slot.acquire(1024, 2, "vm2").unwrap();
        assert_eq!(
            pool.usage(),
            Usage {
                memory_mib: 1536,
                cpus: 3,
                promised_mib: 1536,
                leases: 2
            }
        );
        drop(first);
        assert_eq!(pool.usage().memory_mib, 1024);
        drop(slot);
        assert_eq!(pool.usage(), Usage::default());
        // A lease outliving its file is already returned; dropping it changes nothing.
        drop(second);
        assert_eq!(pool.usage(), Usage::default());
        let other = pool.enter_file("b.lua");
        assert!(other.acquire(2048, 4, "vm1").is_ok());
    }

    #[test]
    fn auto_mode_counts_memory_promised_to_booting_vms() {
        // 4096M available - 1536M reserve = 2560M for VMs.
        let fake = FakeMemInfo::new(16384, 4096);
        let pool = auto(&fake);
        let first_file = pool.enter_file("a.lua");
        let first = first_file.acquire(2000, 1, "vm1").unwrap();
        assert_eq!(pool.usage().promised_mib, 2000);
        let (tx, rx) = mpsc::channel();
        let second_pool = Arc::clone(&pool);
        thread::spawn(move || {
            let slot = second_pool.enter_file("b.lua");
            tx.send(slot.acquire(1000, 1, "vm1").map(|lease| lease.memory_mib()))
                .unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "second boot admitted although the first one's memory is still promised"
        );
        first.booted();
        assert_eq!(pool.usage().promised_mib, 0);
        assert_eq!(
            rx.recv_timeout(TEST_DEADLINE).expect("never admitted"),
            Ok(1000)
        );
    }

    #[test]
    fn auto_mode_rechecks_memory_freed_outside_the_run() {
        let fake = FakeMemInfo::new(16384, 1000);
        let pool = Pool::with_source(
            PoolMode::Auto,
            PoolOptions {
                auto_stall_grace: Duration::from_secs(60),
                ..fast_options()
            },
            Box::new(fake.clone()),
        );
        let (tx, rx) = mpsc::channel();
        let waiter_pool = Arc::clone(&pool);
        thread::spawn(move || {
            let slot = waiter_pool.enter_file("a.lua");
            tx.send(slot.acquire(500, 1, "vm1").map(|_| ())).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        fake.set_available(2036);
        assert_eq!(
            rx.recv_timeout(TEST_DEADLINE).expect("never admitted"),
            Ok(())
        );
    }

    #[test]
    fn auto_mode_gives_up_when_nothing_can_free_memory() {
        let fake = FakeMemInfo::new(16384, 1000);
        let pool = auto(&fake);
        let slot = pool.enter_file("a.lua");
        let started = Instant::now();
        let err = slot.acquire(500, 1, "vm1").unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        let text = err.to_string();
        assert!(matches!(err, PoolError::Stalled { .. }), "{text}");
        assert!(text.contains("MemAvailable 1000M"), "{text}");
        assert_eq!(pool.usage(), Usage::default());
    }

    #[test]
    fn the_boot_gate_never_lets_more_boots_run_than_the_cores_serve() {
        let gate = Arc::new(BootGate::new(2));
        let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..24)
            .map(|i| {
                let gate = Arc::clone(&gate);
                let peak = Arc::clone(&peak);
                std::thread::spawn(move || {
                    let cost = if i % 3 == 0 {
                        BootCost::Accelerated
                    } else {
                        BootCost::Emulated
                    };
                    let _booting = gate.enter(cost).unwrap();
                    peak.fetch_max(gate.busy(), std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 4);
        assert_eq!(gate.busy(), 0, "every slot came back");
        // A one-core host still boots (one TCG boot at a time).
        let small = BootGate::new(1);
        let first = small.enter(BootCost::Emulated).unwrap();
        drop(first);
        assert!(small.enter(BootCost::Emulated).is_ok());
    }
}
