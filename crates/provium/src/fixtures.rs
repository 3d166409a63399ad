//! The run's fixture registry (SPEC §5): each fixture script's state — being built
//! (by which thread), built (its snapshot) or failed (the script's error) — and where
//! fixture scripts are found.
//!
//! The first request for a fixture builds it on its own thread through the closure it
//! passes; concurrent requests wait on a condition variable with a deadline, and a
//! wait that could never end (a fixture needing itself, directly or through other
//! files' builds) fails at once. The run holds the registry and closes it at its end,
//! which deletes every snapshot. The Lua binding (`lua::fixture`) builds and resumes.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::vm::snapshot::Snapshot;

/// How long a request waits for another file's build of the same fixture. A build
/// boots a VM (30 s at most) and runs the script's setup, which may be long.
pub const BUILD_WAIT_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a wait for another file's build checks whether its own file must stop.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// Why `provium.fixture` could not hand out a VM.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FixtureError {
    #[error("fixture name {name:?} is not a plain name (use letters, digits, '_', '-', '.', and '/' between parts)")]
    BadName { name: String },
    #[error("fixture '{name}' not found; looked for {}", list_paths(.looked))]
    NotFound { name: String, looked: Vec<PathBuf> },
    #[error("fixture '{name}' failed: {message}")]
    Failed {
        name: String,
        message: String,
        /// The build's log, kept for the failure report.
        log: Option<PathBuf>,
        /// Consoles of the VMs the script booted.
        consoles: Vec<PathBuf>,
    },
    #[error("fixture '{name}' depends on itself: {chain}")]
    Cycle { name: String, chain: String },
    #[error("fixture '{name}' was not built within {timeout:?} (another file is building it)")]
    Timeout { name: String, timeout: Duration },
    #[error("fixture '{name}': the run is ending")]
    RunEnded { name: String },
    /// The requesting file had to stop while it waited for or built the fixture; a
    /// build stopped this way is not recorded (the next request builds again).
    #[error("fixture '{name}': {reason}")]
    Stopped { name: String, reason: String },
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds `fixtures/<name>.lua`, searching from `start` (the requesting script's
/// directory) up to and including `root` (the test root).
pub fn locate(name: &str, start: &Path, root: &Path) -> Result<PathBuf, FixtureError> {
    let plain = !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    if !plain {
        return Err(FixtureError::BadName {
            name: name.to_string(),
        });
    }
    let mut looked = Vec::new();
    let mut dir = Some(start);
    while let Some(current) = dir {
        let candidate = current.join("fixtures").join(format!("{name}.lua"));
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate);
        // A start outside the root (a single-file run) searches its own directory only.
        if current == root || !current.starts_with(root) {
            break;
        }
        dir = current.parent();
    }
    Err(FixtureError::NotFound {
        name: name.to_string(),
        looked,
    })
}

enum Entry {
    Building { builder: ThreadId, name: String },
    Ready(Arc<Snapshot>),
    Failed(FixtureError),
}

#[derive(Default)]
struct State {
    /// Keyed by the fixture script's path.
    entries: HashMap<PathBuf, Entry>,
    /// Which fixture each waiting thread waits for (to detect cross-file cycles).
    waiting: HashMap<ThreadId, PathBuf>,
    /// Every snapshot path handed out, built or not, for the end-of-run sweep.
    paths: Vec<PathBuf>,
    closed: bool,
}

/// One run's fixtures.
#[derive(Default)]
pub struct Registry {
    state: Mutex<State>,
    changed: Condvar,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Registry")
            .field("fixtures", &state.entries.len())
            .field("closed", &state.closed)
            .finish()
    }
}

/// What a build produced: the snapshot, or the failure every request reports.
pub type BuildResult = Result<Snapshot, FixtureError>;

thread_local! {
    /// Fixtures this thread is building, outermost first (fixtures may use fixtures).
    static BUILDING: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot of the fixture at `script`, built by `build` on this thread if no
    /// one has started it, else awaited (up to `wait`). `build` gets the path its
    /// snapshot must be written to.
    pub fn get(
        &self,
        name: &str,
        script: &Path,
        snapshot_dir: &Path,
        wait: Duration,
        build: impl FnOnce(&Path) -> BuildResult,
    ) -> Result<Arc<Snapshot>, FixtureError> {
        let me = std::thread::current().id();
        let deadline = Instant::now() + wait;
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(FixtureError::RunEnded {
                    name: name.to_string(),
                });
            }
            match state.entries.get(script) {
                Some(Entry::Ready(snapshot)) => return Ok(Arc::clone(snapshot)),
                Some(Entry::Failed(error)) => return Err(error.clone()),
                Some(Entry::Building { builder, .. }) => {
                    if let Some(chain) = cycle(&state, *builder, me, name) {
                        return Err(FixtureError::Cycle {
                            name: name.to_string(),
                            chain,
                        });
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(FixtureError::Timeout {
                            name: name.to_string(),
                            timeout: wait,
                        });
                    }
                    if let Err(stop) = crate::cancel::checkpoint() {
                        return Err(FixtureError::Stopped {
                            name: name.to_string(),
                            reason: stop.to_string(),
                        });
                    }
                    state.waiting.insert(me, script.to_path_buf());
                    state = self
                        .changed
                        .wait_timeout(state, (deadline - now).min(STOP_CHECK))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    state.waiting.remove(&me);
                }
                None => break,
            }
        }
        let path = snapshot_dir.join(format!("fixture-{}.snap", state.paths.len() + 1));
        state.paths.push(path.clone());
        state.entries.insert(
            script.to_path_buf(),
            Entry::Building {
                builder: me,
                name: name.to_string(),
            },
        );
        drop(state);

        // Whatever happens to the build (even a panic), waiters must hear of it.
        let mut guard = BuildGuard {
            registry: self,
            script,
            name,
            finished: false,
        };
        BUILDING.with(|b| b.borrow_mut().push(name.to_string()));
        let result = build(&path);
        BUILDING.with(|b| b.borrow_mut().pop());
        guard.finished = true;
        let mut state = self.lock();
        let (entry, answer) = match result {
            Ok(_) if state.closed => {
                let ended = FixtureError::RunEnded {
                    name: name.to_string(),
                };
                (Some(Entry::Failed(ended.clone())), Err(ended))
            }
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                (Some(Entry::Ready(Arc::clone(&snapshot))), Ok(snapshot))
            }
            // The requester stopped, not the fixture: the next request builds again.
            Err(error @ FixtureError::Stopped { .. }) => (None, Err(error)),
            Err(error) => (Some(Entry::Failed(error.clone())), Err(error)),
        };
        match entry {
            Some(entry) => state.entries.insert(script.to_path_buf(), entry),
            None => state.entries.remove(script),
        };
        drop(state);
        self.changed.notify_all();
        answer
    }

    /// Ends the run's fixtures: every snapshot file is deleted (including one whose
    /// build is still running, which then fails with [`FixtureError::RunEnded`]).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let entries = std::mem::take(&mut state.entries);
        let paths = std::mem::take(&mut state.paths);
        drop(state);
        self.changed.notify_all();
        // Resumed VMs may still hold a snapshot's Arc: remove the files by name.
        drop(entries);
        for path in paths {
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(path.with_extension("initrd"));
        }
    }
}

/// Marks an abandoned build (the builder panicked) as failed.
struct BuildGuard<'a> {
    registry: &'a Registry,
    script: &'a Path,
    name: &'a str,
    finished: bool,
}

impl Drop for BuildGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        BUILDING.with(|b| b.borrow_mut().pop());
        let failed = FixtureError::Failed {
            name: self.name.to_string(),
            message: "the build panicked".to_string(),
            log: None,
            consoles: Vec::new(),
        };
        self.registry
            .lock()
            .entries
            .insert(self.script.to_path_buf(), Entry::Failed(failed));
        self.registry.changed.notify_all();
    }
}

/// Waiting for a build by `builder` deadlocks when `builder` is this thread, or is
/// itself waiting (through other builders) for a fixture this thread is building.
/// Returns the dependency chain for the message.
fn cycle(state: &State, builder: ThreadId, me: ThreadId, name: &str) -> Option<String> {
    let mut chain: Vec<String> = BUILDING.with(|b| b.borrow().clone());
    chain.push(name.to_string());
    let mut current = builder;
    // Each step follows a distinct thread; more steps than threads means a cycle that
    // does not involve us, which the builders will time out on themselves.
    for _ in 0..=state.waiting.len() {
        if current == me {
            return Some(chain.join(" -> "));
        }
        let awaited = state.waiting.get(&current)?;
        match state.entries.get(awaited) {
            Some(Entry::Building { builder, name }) => {
                chain.push(name.clone());
                current = *builder;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn locate_searches_upward_to_the_root_and_names_every_place() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let deep = root.join("a/b");
        fs::create_dir_all(root.join("fixtures")).unwrap();
        fs::create_dir_all(root.join("a/fixtures")).unwrap();
        fs::create_dir_all(&deep).unwrap();
        fs::write(root.join("fixtures/base.lua"), "").unwrap();
        fs::write(root.join("a/fixtures/near.lua"), "").unwrap();
        fs::write(root.join("fixtures/near.lua"), "").unwrap();

        assert_eq!(
            locate("base", &deep, root).unwrap(),
            root.join("fixtures/base.lua")
        );
        assert_eq!(
            locate("near", &deep, root).unwrap(),
            root.join("a/fixtures/near.lua"),
            "the nearest fixtures/ directory wins"
        );
        let error = locate("absent", &deep, root).unwrap_err();
        assert_eq!(
            error,
            FixtureError::NotFound {
                name: "absent".into(),
                looked: vec![
                    root.join("a/b/fixtures/absent.lua"),
                    root.join("a/fixtures/absent.lua"),
                    root.join("fixtures/absent.lua"),
                ],
            }
        );
        assert!(error
            .to_string()
            .starts_with("fixture 'absent' not found; looked for "));
        for bad in ["", "../x", "/etc/passwd", "a b", "x/../../y"] {
            assert!(
                matches!(locate(bad, &deep, root), Err(FixtureError::BadName { .. })),
                "{bad:?} accepted"
            );
        }
    }

    fn failed(name: &str, message: &str) -> FixtureError {
        FixtureError::Failed {
            name: name.into(),
            message: message.into(),
            log: None,
            consoles: Vec::new(),
        }
    }

    #[test]
    fn one_build_serves_concurrent_requests_and_failures_repeat() {
        let registry = Arc::new(Registry::default());
        let builds = Arc::new(AtomicUsize::new(0));
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let registry = Arc::clone(&registry);
                let builds = Arc::clone(&builds);
                let snapdir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    registry.get(
                        "broken",
                        Path::new("/t/fixtures/broken.lua"),
                        &snapdir,
                        Duration::from_secs(10),
                        |path| {
                            assert!(path.starts_with(&snapdir));
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(200));
                            Err(failed("broken", "broken.lua:1: boom"))
                        },
                    )
                })
            })
            .collect();
        for handle in handles {
            let error = handle.join().unwrap().unwrap_err();
            assert_eq!(error, failed("broken", "broken.lua:1: boom"));
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_fixture_using_itself_is_a_cycle_not_a_hang() {
        let registry = Registry::default();
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new("/t/fixtures/loop.lua");
        let start = Instant::now();
        let error = registry
            .get("loop", script, dir.path(), Duration::from_secs(30), |_| {
                let inner = registry
                    .get("loop", script, dir.path(), Duration::from_secs(30), |_| {
                        unreachable!("the fixture is already being built")
                    })
                    .unwrap_err();
                Err(failed("loop", &inner.to_string()))
            })
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            error,
            failed("loop", "fixture 'loop' depends on itself: loop -> loop")
        );
    }

    #[test]
    fn a_panicking_build_fails_its_waiters_and_close_removes_files() {
        let registry = Arc::new(Registry::default());
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from("/t/fixtures/p.lua");
        let builder = {
            let registry = Arc::clone(&registry);
            let script = script.clone();
            let snapdir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let _ = registry.get("p", &script, &snapdir, Duration::from_secs(5), |path| {
                    fs::write(path, "partial").unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    panic!("build exploded");
                });
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let error = registry
            .get("p", &script, dir.path(), Duration::from_secs(5), |_| {
                unreachable!("the first request builds")
            })
            .unwrap_err();
        assert_eq!(error, failed("p", "the build panicked"));
        assert!(builder.join().is_err());
        let leftover = dir.path().join("fixture-1.snap");
        assert!(leftover.exists());
        registry.close();
        assert!(!leftover.exists(), "close() sweeps every snapshot path");
        let error = registry
            .get("p", &script, dir.path(), Duration::from_secs(5), |_| {
                unreachable!("a closed registry builds nothing")
            })
            .unwrap_err();
        assert_eq!(error, FixtureError::RunEnded { name: "p".into() });
    }
}
