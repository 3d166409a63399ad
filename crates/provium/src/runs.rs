//! Run directories, per-file logs and the failed-file record for `--rerun-failed`.
//!
//! Layout under the runs parent (`/tmp/provium-runs`, or `$PROVIUM_RUNS_DIR`):
//!
//! ```text
//! run-<id>/                 mode 0700, one per run; VM sockets live here too
//!     <relative path>.log   one per test file, subdirectories mirrored
//! last-<hash>.json          per test root: the most recent run and its failed files
//! ```
//!
//! The per-root record lives beside the run directories rather than inside them so
//! that a run in which everything passed can delete its (then empty) directory and
//! still tell the next `--rerun-failed` that nothing failed.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use std::sync::{mpsc, Arc};

use crate::config::Config;
use crate::fixtures;
use crate::pool::Pool;
use crate::report::Event;
use crate::vm::host::HostCache;

/// Where a file's thread sends what happens while it runs (boots, finished
/// sub-tests, notices); the dispatcher forwards them in order with its own events.
#[derive(Debug, Clone, Default)]
pub struct RunEvents(Option<mpsc::Sender<Event>>);

impl RunEvents {
    pub fn new(sender: mpsc::Sender<Event>) -> RunEvents {
        RunEvents(Some(sender))
    }

    /// Sends `event`; dropped when nobody listens (tests, a run that has ended).
    pub fn send(&self, event: Event) {
        if let Some(sender) = &self.0 {
            let _ = sender.send(event);
        }
    }
}

/// Everything a run shares with every file it runs: read-only after the run starts,
/// handed to each file's Lua state as an `Arc`.
#[derive(Debug)]
pub struct RunContext {
    pub run_dir: RunDir,
    /// Where relative paths from the configuration and `vm:boot{files=…}` resolve.
    pub project_root: PathBuf,
    /// The profiles from `provium.toml` (none when there is no such file).
    pub config: Config,
    /// Gates VM boots (`--mem`/`--cpus` or auto); each file holds a slot in it.
    pub pool: Arc<Pool>,
    /// QEMU, accelerator and default profile, resolved on the run's first boot.
    pub vm_host: HostCache,
    /// The run's fixtures: built once, snapshots deleted when the run closes it.
    pub fixtures: fixtures::Registry,
    pub events: RunEvents,
    /// The run's network subnets (`provium.network`), distinct across its files.
    pub subnets: crate::net::SubnetAllocator,
    /// Numbers the networks' socket directories in the run directory.
    pub next_network: std::sync::atomic::AtomicUsize,
    /// Whether and how `vm:shell()` may attach an interactive shell.
    pub shell: ShellAccess,
    /// The exit status of the last shell that ended (`provium shell` exits with it).
    pub shell_status: std::sync::Mutex<Option<i32>>,
    /// Set when something makes the rest of the run pointless (a profile's build
    /// failed): the dispatcher starts no more files.
    stop: std::sync::Mutex<Option<String>>,
}

/// Whether a run may hand the terminal to a shell in a guest (`vm:shell()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellAccess {
    /// Not on a terminal, or files run in parallel: `vm:shell()` raises at once, so
    /// one left in a file can never hang CI.
    Refused,
    /// A sequential run (`-p 1`) on a terminal; `on_failure` is
    /// `--shell-on-failure`.
    Terminal { on_failure: bool },
    /// `provium shell`: an interactive shell on a pty, or (`-c`, or stdin no
    /// terminal) `command` or the script on stdin, without a pty.
    Cli { command: Option<String>, pty: bool },
}

impl RunContext {
    /// A run's context: its directory, configuration, pool and host cache, a fresh
    /// fixture registry, and where its files' events go.
    pub fn new(
        run_dir: RunDir,
        config: Config,
        pool: Arc<Pool>,
        vm_host: HostCache,
        events: RunEvents,
    ) -> RunContext {
        RunContext {
            run_dir,
            project_root: config.root.clone(),
            config,
            pool,
            vm_host,
            fixtures: fixtures::Registry::default(),
            events,
            subnets: crate::net::SubnetAllocator::new(),
            next_network: std::sync::atomic::AtomicUsize::new(0),
            shell: ShellAccess::Refused,
            shell_status: std::sync::Mutex::new(None),
            stop: std::sync::Mutex::new(None),
        }
    }

    /// The same context, letting `vm:shell()` attach as `access` says.
    pub fn with_shell(mut self, access: ShellAccess) -> RunContext {
        self.shell = access;
        self
    }

    /// Asks the dispatcher to start no more files, saying why (once).
    pub fn request_stop(&self, reason: String) {
        let mut stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if stop.is_none() {
            self.events.send(Event::Notice(format!(
                "provium: stopping the run: {reason}"
            )));
            *stop = Some(reason);
        }
    }

    /// Whether the run was asked to start no more files.
    pub fn stop_requested(&self) -> bool {
        self.stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// Where run directories go when `PROVIUM_RUNS_DIR` is not set.
pub const DEFAULT_RUNS_PARENT: &str = "/tmp/provium-runs";
/// Finished run directories kept (the newest), unless `PROVIUM_KEEP_RUNS` says.
pub const DEFAULT_KEEP_RUNS: usize = 20;
/// In a run directory while its run lives: the pid and start time of its provium.
const OWNER_FILE: &str = ".provium-run";
/// Run ids are base-36; 8 digits keep socket paths short and collisions rare
/// (and a collision only costs a retry: directory creation is exclusive).
const RUN_ID_LEN: usize = 8;
const CREATE_ATTEMPTS: usize = 32;

#[derive(Debug, Error)]
pub enum RunsError {
    #[error("cannot create the runs directory {path}: {source}")]
    CreateParent { path: PathBuf, source: io::Error },
    #[error("cannot create a run directory under {parent}: {source}")]
    CreateRun { parent: PathBuf, source: io::Error },
    #[error("cannot create log {path}: {source}")]
    CreateLog { path: PathBuf, source: io::Error },
    #[error("cannot write the failure record {path}: {source}")]
    WriteRecord { path: PathBuf, source: io::Error },
    #[error("cannot read the failure record {path}: {reason}")]
    ReadRecord { path: PathBuf, reason: String },
}

/// The parent of all run directories: `$PROVIUM_RUNS_DIR` or `/tmp/provium-runs`.
pub fn runs_parent() -> PathBuf {
    match std::env::var_os("PROVIUM_RUNS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_RUNS_PARENT),
    }
}

/// This run's private directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
    id: String,
}

impl RunDir {
    /// Creates `<parent>/run-<id>` with mode 0700, choosing an id no other run holds.
    pub fn create(parent: &Path) -> Result<RunDir, RunsError> {
        fs::create_dir_all(parent).map_err(|source| RunsError::CreateParent {
            path: parent.to_path_buf(),
            source,
        })?;
        let mut last_error = None;
        for _ in 0..CREATE_ATTEMPTS {
            let id = new_run_id();
            let path = parent.join(format!("run-{id}"));
            // Exclusive creation is what makes concurrent runs safe: the loser of a
            // race gets EEXIST and simply draws another id.
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    // A run killed without its cleanup is known by this file: the
                    // next run finds its owner gone and removes the directory.
                    let me = std::process::id();
                    let owner = format!("{me} {}\n", process_start(me).unwrap_or(0));
                    fs::write(path.join(OWNER_FILE), owner).map_err(|source| {
                        RunsError::CreateRun {
                            parent: parent.to_path_buf(),
                            source,
                        }
                    })?;
                    return Ok(RunDir { path, id });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(source) => {
                    return Err(RunsError::CreateRun {
                        parent: parent.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Err(RunsError::CreateRun {
            parent: parent.to_path_buf(),
            source: last_error.unwrap_or_else(|| io::Error::other("no free run id")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `<run dir>/<name>.log`, where `name` is the file's path relative to the root.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.log"))
    }

    /// The log of attempt `attempt` of file `name` (`--retries`): `<name>.log` for
    /// the first, then `<name>.attempt2.log`, … — each attempt keeps its own.
    pub fn attempt_log_path(&self, name: &str, attempt: u32) -> PathBuf {
        if attempt <= 1 {
            self.log_path(name)
        } else {
            self.log_path(&format!("{name}.attempt{attempt}"))
        }
    }

    /// Ends the run's hold on its directory, and removes the directory if nothing is
    /// left in it (every file passed and the VM code cleaned up after itself); a
    /// directory with logs in it is kept.
    pub fn finish(&self) -> bool {
        let _ = fs::remove_file(self.path.join(OWNER_FILE));
        fs::remove_dir(&self.path).is_ok()
    }
}

/// When process `pid` started (clock ticks after boot, /proc/PID/stat field 22): with
/// the pid, it tells a live provium from a later process that reused its pid.
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the run that made `dir` still runs: `None` when it finished (no owner
/// file), else whether its provium is alive.
fn owner_alive(dir: &Path) -> Option<bool> {
    let owner = fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
    let mut parts = owner.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let start: u64 = parts.next()?.parse().ok()?;
    Some(process_start(pid) == Some(start))
}

/// How many finished run directories to keep: `PROVIUM_KEEP_RUNS`, else 20.
pub fn keep_runs() -> usize {
    std::env::var("PROVIUM_KEEP_RUNS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_KEEP_RUNS)
}

/// Bounds what runs leave under `parent`: directories of runs killed without their
/// cleanup (their provium is gone) are removed, and of the finished ones the newest
/// `keep` stay, with every one a failure record points at (what `--rerun-failed` and
/// its logs need). Returns the directories removed.
pub fn sweep(parent: &Path, keep: usize) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    let mut finished: Vec<(SystemTime, PathBuf)> = Vec::new();
    let mut records: Vec<PathBuf> = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("last-") && name.ends_with(".json") {
            if let Some(record) = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<FailureRecord>(&b).ok())
            {
                records.push(record.run_dir);
            }
            continue;
        }
        if !name.starts_with("run-") || !path.is_dir() {
            continue;
        }
        match owner_alive(&path) {
            Some(true) => {}
            Some(false) => {
                if fs::remove_dir_all(&path).is_ok() {
                    removed.push(path);
                }
            }
            None => {
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(UNIX_EPOCH);
                finished.push((modified, path));
            }
        }
    }
    finished.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in finished.into_iter().skip(keep) {
        if !records.contains(&path) && fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let seed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut value = fnv1a(&seed.to_le_bytes());
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..RUN_ID_LEN)
        .map(|_| {
            let digit = DIGITS[(value % 36) as usize] as char;
            value /= 36;
            digit
        })
        .collect()
}

/// FNV-1a: stable across Rust releases, unlike `DefaultHasher`, which matters for a
/// file name that must be found again by a later provium build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One test file's log, written while the file runs so it can be followed live.
#[derive(Debug)]
pub struct FileLog {
    path: PathBuf,
    file: File,
}

impl FileLog {
    /// Creates the log and any mirrored subdirectories under the run directory.
    pub fn create(path: PathBuf) -> Result<FileLog, RunsError> {
        let create = || -> io::Result<File> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            OpenOptions::new().write(true).create_new(true).open(&path)
        };
        match create() {
            Ok(file) => Ok(FileLog { path, file }),
            Err(source) => Err(RunsError::CreateLog { path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `text` as is; a log that cannot be written must not fail the test, so
    /// write errors are ignored here (the file's own outcome is still reported).
    pub fn write(&mut self, text: &str) {
        let _ = self.file.write_all(text.as_bytes());
    }

    /// Deletes the log of a passing file, then any mirrored subdirectories it leaves
    /// empty, up to (not including) `run_dir`.
    pub fn delete(self, run_dir: &Path) {
        let FileLog { path, file } = self;
        drop(file);
        let _ = fs::remove_file(&path);
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == run_dir || !d.starts_with(run_dir) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// What `--rerun-failed` reads: which files of one test root (and `--partition`
/// shard) failed when they last ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Canonical path of the `<path>` argument (a directory or a single file).
    pub root: PathBuf,
    /// The `--partition` shard (`count:2/4`), if the runs were sharded.
    #[serde(default)]
    pub partition: Option<String>,
    /// The run that last updated the record.
    pub run_dir: PathBuf,
    pub finished_unix_ms: u64,
    /// Relative names of the files that failed, sorted.
    pub failed: Vec<String>,
}

impl FailureRecord {
    pub fn new(root: PathBuf, run_dir: PathBuf, mut failed: Vec<String>) -> Self {
        failed.sort();
        let finished_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        FailureRecord {
            root,
            partition: None,
            run_dir,
            finished_unix_ms,
            failed,
        }
    }

    /// The record after a run that ran `finished` (name, failed?) under this root:
    /// files it ran and passed leave it, files it ran and failed join it, files it
    /// did not run keep their state.
    pub fn updated(
        previous: Option<FailureRecord>,
        root: PathBuf,
        partition: Option<String>,
        run_dir: PathBuf,
        finished: &[(String, bool)],
    ) -> FailureRecord {
        let mut failed: Vec<String> = previous.map(|r| r.failed).unwrap_or_default();
        for (name, did_fail) in finished {
            failed.retain(|f| f != name);
            if *did_fail {
                failed.push(name.clone());
            }
        }
        let mut record = FailureRecord::new(root, run_dir, failed);
        record.partition = partition;
        record
    }

    fn record_path(parent: &Path, root: &Path, partition: Option<&str>) -> PathBuf {
        let mut key = root.as_os_str().as_encoded_bytes().to_vec();
        if let Some(partition) = partition {
            key.extend_from_slice(b"\0partition ");
            key.extend_from_slice(partition.as_bytes());
        }
        let hash = fnv1a(&key);
        parent.join(format!("last-{hash:016x}.json"))
    }

    /// Replaces the root's record atomically (write then rename), so a concurrent
    /// reader sees the old record or the new one, never half of one.
    pub fn save(&self, parent: &Path) -> Result<(), RunsError> {
        let path = Self::record_path(parent, &self.root, self.partition.as_deref());
        let tmp = parent.join(format!(".last-{}-{}.tmp", std::process::id(), new_run_id()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| RunsError::WriteRecord {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let write = || -> io::Result<()> {
            fs::write(&tmp, &json)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            RunsError::WriteRecord {
                path: path.clone(),
                source,
            }
        })
    }

    /// The record of `root` (and `partition`), if any run of it finished.
    pub fn load(
        parent: &Path,
        root: &Path,
        partition: Option<&str>,
    ) -> Result<Option<FailureRecord>, RunsError> {
        let path = Self::record_path(parent, root, partition);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RunsError::ReadRecord {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let record: FailureRecord =
            serde_json::from_slice(&bytes).map_err(|e| RunsError::ReadRecord {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        // A hash collision between two roots must not hand one root the other's list.
        Ok((record.root == root && record.partition.as_deref() == partition).then_some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn run_dirs_are_private_and_unique() {
        let parent = tempfile::tempdir().unwrap();
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let run = RunDir::create(parent.path()).unwrap();
            let mode = fs::metadata(run.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
            assert_eq!(run.id().len(), RUN_ID_LEN);
            assert!(
                seen.insert(run.id().to_string()),
                "duplicate id {}",
                run.id()
            );
        }
    }

    #[test]
    fn concurrent_creation_never_shares_a_directory() {
        let parent = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let parent = parent.path().to_path_buf();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|_| RunDir::create(&parent).unwrap().path().to_path_buf())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<PathBuf> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn passing_log_deletion_removes_mirrored_dirs() {
        let parent = tempfile::tempdir().unwrap();
        let run = RunDir::create(parent.path()).unwrap();
        let mut log = FileLog::create(run.log_path("a/b/c.lua")).unwrap();
        log.write("hello\n");
        assert!(run.path().join("a/b/c.lua.log").is_file());
        log.delete(run.path());
        assert!(!run.path().join("a").exists());
        assert!(run.finish(), "only the owner file was left, and it goes");
    }

    #[test]
    fn sweeping_removes_killed_runs_and_keeps_the_newest_and_the_recorded() {
        let parent = tempfile::tempdir().unwrap();
        let live = RunDir::create(parent.path()).unwrap();
        // A run whose provium is gone: its owner file names a pid that is not running.
        let killed = RunDir::create(parent.path()).unwrap();
        fs::write(killed.path().join(OWNER_FILE), "999999999 1\n").unwrap();
        fs::write(killed.path().join("fixture-1.snap"), "x").unwrap();
        let mut finished = Vec::new();
        for i in 0..5 {
            let run = RunDir::create(parent.path()).unwrap();
            fs::write(run.log_path(&format!("f{i}.lua")), "log").unwrap();
            assert!(!run.finish(), "a run with a log keeps its directory");
            let when = SystemTime::now() - std::time::Duration::from_secs(100 - i);
            fs::File::open(run.path())
                .unwrap()
                .set_modified(when)
                .unwrap();
            finished.push(run.path().to_path_buf());
        }
        // The oldest is what --rerun-failed points at.
        FailureRecord::new("/t".into(), finished[0].clone(), vec!["f0.lua".into()])
            .save(parent.path())
            .unwrap();
        let removed = sweep(parent.path(), 2);
        assert!(removed.contains(&killed.path().to_path_buf()));
        assert!(live.path().exists(), "a live run is never touched");
        let kept: Vec<bool> = finished.iter().map(|p| p.exists()).collect();
        assert_eq!(kept, [true, false, false, true, true]);
    }

    #[test]
    fn records_are_per_root() {
        let parent = tempfile::tempdir().unwrap();
        let one = PathBuf::from("/tests/one");
        let two = PathBuf::from("/tests/two");
        assert_eq!(
            FailureRecord::load(parent.path(), &one, None).unwrap(),
            None
        );
        let record = FailureRecord::new(
            one.clone(),
            "/r".into(),
            vec!["b.lua".into(), "a.lua".into()],
        );
        record.save(parent.path()).unwrap();
        let loaded = FailureRecord::load(parent.path(), &one, None)
            .unwrap()
            .unwrap();
        assert_eq!(loaded.failed, vec!["a.lua", "b.lua"]);
        assert_eq!(
            FailureRecord::load(parent.path(), &two, None).unwrap(),
            None
        );
        assert_eq!(
            FailureRecord::load(parent.path(), &one, Some("count:1/2")).unwrap(),
            None,
            "each shard has its own record"
        );
    }

    #[test]
    fn records_change_only_for_the_files_a_run_ran() {
        let previous = FailureRecord::new(
            "/t".into(),
            "/r1".into(),
            vec!["a.lua".into(), "b.lua".into()],
        );
        let finished = [("a.lua".to_string(), false), ("c.lua".to_string(), true)];
        let next =
            FailureRecord::updated(Some(previous), "/t".into(), None, "/r2".into(), &finished);
        assert_eq!(next.failed, ["b.lua", "c.lua"]);
        assert_eq!(next.run_dir, PathBuf::from("/r2"));
    }
}
