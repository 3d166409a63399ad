//! When a file must stop: its time limit, its current sub-test's limit, and an
//! interrupt of the whole run — checked at every wait of the file's thread.
//!
//! Each test file runs on its own thread, and everything that can block it (the Lua
//! interpreter, an agent call, a boot, a pool or fixture wait, a host command) runs on
//! that thread. The file's [`Cancel`] is entered as the thread's current one for the
//! file's duration, and every such wait calls [`checkpoint`] while it waits (they all
//! wake at least every 250 ms already, for their liveness checks), so a timeout or an
//! interrupt stops the file within about a second wherever it is. Threads a wait
//! spawns for itself (the two handshake attempts of a boot) capture the token with
//! [`current`]. The dispatcher holds a clone of the same token to interrupt the file
//! and to notice a file that does not come back.

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::duration;

/// Why a file (or its current sub-test) must stop now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The file ran out of its time; `subtest` is the one it was in.
    FileTimeout {
        limit: Duration,
        subtest: Option<String>,
    },
    /// The current sub-test ran out of its own time.
    SubtestTimeout { limit: Duration, name: String },
    /// SIGINT or SIGTERM stopped the run.
    Interrupted { signal: &'static str },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::FileTimeout {
                limit,
                subtest: Some(name),
            } => write!(
                f,
                "timed out after {} (in sub-test '{name}')",
                duration::show(*limit)
            ),
            Stop::FileTimeout { limit, .. } | Stop::SubtestTimeout { limit, .. } => {
                write!(f, "timed out after {}", duration::show(*limit))
            }
            Stop::Interrupted { signal } => write!(f, "interrupted by {signal}"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// When the file started, and its limit (none: no timeout).
    started: Option<Instant>,
    file_limit: Option<Duration>,
    /// The running sub-test, its start and its own limit.
    subtest: Option<(String, Instant, Option<Duration>)>,
    interrupted: Option<&'static str>,
    /// Since when the file's clocks are stopped (a person is in `vm:shell()`).
    paused: Option<Instant>,
}

impl State {
    fn stop(&self, now: Instant) -> Option<Stop> {
        if let Some(signal) = self.interrupted {
            return Some(Stop::Interrupted { signal });
        }
        if self.paused.is_some() {
            return None;
        }
        if let (Some(started), Some(limit)) = (self.started, self.file_limit) {
            if now >= started + limit {
                return Some(Stop::FileTimeout {
                    limit,
                    subtest: self.subtest.as_ref().map(|(name, ..)| name.clone()),
                });
            }
        }
        if let Some((name, started, Some(limit))) = &self.subtest {
            if now >= *started + *limit {
                return Some(Stop::SubtestTimeout {
                    limit: *limit,
                    name: name.clone(),
                });
            }
        }
        None
    }
}

/// One file's stop conditions, shared by its thread and the dispatcher. A fixture
/// build runs under a child token: its own sub-tests, its requester's limits.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    state: Arc<Mutex<State>>,
    parent: Option<Box<Cancel>>,
}

impl Cancel {
    /// A file starting now with `limit` (none: no timeout).
    pub fn for_file(limit: Option<Duration>) -> Cancel {
        Cancel {
            state: Arc::new(Mutex::new(State {
                started: Some(Instant::now()),
                file_limit: limit,
                ..State::default()
            })),
            parent: None,
        }
    }

    /// A token for work done on behalf of `parent` (a fixture build for a file): it
    /// stops when the parent must, and has its own sub-tests.
    pub fn child(parent: &Cancel) -> Cancel {
        Cancel {
            state: Arc::default(),
            parent: Some(Box::new(parent.clone())),
        }
    }

    /// Identifies the file this token belongs to (children share their root's).
    pub fn id(&self) -> usize {
        match &self.parent {
            Some(parent) => parent.id(),
            None => Arc::as_ptr(&self.state) as usize,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` once the file or its current sub-test must stop.
    pub fn check(&self) -> Result<(), Stop> {
        if let Some(parent) = &self.parent {
            parent.check()?;
        }
        match self.lock().stop(Instant::now()) {
            Some(stop) => Err(stop),
            None => Ok(()),
        }
    }

    /// Replaces the file's limit, still measured from the file's start
    /// (`provium.timeout`); `None` lifts it.
    pub fn set_file_limit(&self, limit: Option<Duration>) {
        self.lock().file_limit = limit;
    }

    /// When the file's time runs out, if it has a limit (none while paused).
    pub fn file_deadline(&self) -> Option<Instant> {
        let state = self.lock();
        if state.paused.is_some() {
            return None;
        }
        Some(state.started? + state.file_limit?)
    }

    /// Stops the file's and the sub-test's clocks until the guard drops: the time a
    /// person spends in an interactive shell is not the test's. An interrupt still
    /// stops the file.
    pub fn pause(&self) -> Paused {
        // This token (a fixture build's sub-tests) and the file's.
        let mut tokens = vec![self.clone()];
        if self.parent.is_some() {
            tokens.push(self.root());
        }
        let held = tokens
            .into_iter()
            .map(|cancel| {
                let mut state = cancel.lock();
                let outer = state.paused.is_some();
                state.paused.get_or_insert_with(Instant::now);
                drop(state);
                (cancel, outer)
            })
            .collect();
        Paused { held }
    }

    fn root(&self) -> Cancel {
        match &self.parent {
            Some(parent) => parent.root(),
            None => self.clone(),
        }
    }

    /// A sub-test starts, with its own limit if it has one.
    pub fn enter_subtest(&self, name: &str, limit: Option<Duration>) {
        self.lock().subtest = Some((name.to_string(), Instant::now(), limit));
    }

    /// The sub-test ended; returns why it had to stop, if it had to (its own limit,
    /// the file's, or an interrupt).
    pub fn leave_subtest(&self) -> Option<Stop> {
        let stop = self.check().err();
        self.lock().subtest = None;
        stop
    }

    /// Stops the file at its next checkpoint (the run was interrupted).
    pub fn interrupt(&self, signal: &'static str) {
        self.lock().interrupted = Some(signal);
    }
}

/// The clocks of a paused file run again when this drops, shifted by the pause.
pub struct Paused {
    /// Each token paused, and whether it already was (a pause inside another leaves
    /// the clocks to the outer one).
    held: Vec<(Cancel, bool)>,
}

impl Drop for Paused {
    fn drop(&mut self) {
        for (cancel, outer) in &self.held {
            if *outer {
                continue;
            }
            let mut state = cancel.lock();
            if let Some(since) = state.paused.take() {
                let pause = since.elapsed();
                if let Some(started) = &mut state.started {
                    *started += pause;
                }
                if let Some((_, started, _)) = &mut state.subtest {
                    *started += pause;
                }
            }
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Cancel>> = const { RefCell::new(None) };
}

/// Makes `cancel` the calling thread's current token until the guard drops.
pub fn enter(cancel: &Cancel) -> Entered {
    let previous = CURRENT.with(|c| c.replace(Some(cancel.clone())));
    Entered { previous }
}

/// Restores the thread's previous token (fixture builds nest inside test files).
pub struct Entered {
    previous: Option<Cancel>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The calling thread's token, for threads a wait spawns for itself.
pub fn current() -> Option<Cancel> {
    CURRENT.with(|c| c.borrow().clone())
}

/// `Err` when the calling thread's file must stop now; `Ok` on threads without one.
pub fn checkpoint() -> Result<(), Stop> {
    CURRENT.with(|c| match &*c.borrow() {
        Some(cancel) => cancel.check(),
        None => Ok(()),
    })
}

/// Sleeps `duration`, waking early (with the reason) when the file must stop.
pub fn sleep(duration: Duration) -> Result<(), Stop> {
    const SLICE: Duration = Duration::from_millis(50);
    let deadline = Instant::now() + duration;
    loop {
        checkpoint()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(SLICE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_stops_the_clocks_but_not_an_interrupt() {
        let cancel = Cancel::for_file(Some(Duration::from_millis(100)));
        cancel.enter_subtest("t", Some(Duration::from_millis(60)));
        std::thread::sleep(Duration::from_millis(40));
        {
            let _paused = cancel.pause();
            let _inner = cancel.pause();
            assert_eq!(cancel.file_deadline(), None);
            std::thread::sleep(Duration::from_millis(120));
            assert_eq!(cancel.check(), Ok(()), "no limit runs out while paused");
        }
        // 40 ms of the file's 100 and the sub-test's 60 were used before the pause.
        assert_eq!(cancel.check(), Ok(()));
        assert!(cancel.file_deadline().unwrap() > Instant::now() + Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            cancel.check().unwrap_err().to_string(),
            "timed out after 60ms"
        );

        let child = Cancel::child(&cancel);
        let _paused = child.pause();
        cancel.interrupt("SIGINT");
        assert_eq!(
            child.check().unwrap_err().to_string(),
            "interrupted by SIGINT"
        );
    }

    #[test]
    fn limits_fire_and_name_their_sub_test() {
        let cancel = Cancel::for_file(Some(Duration::from_millis(80)));
        assert_eq!(cancel.check(), Ok(()));
        cancel.enter_subtest("fast", Some(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(30));
        let stop = cancel.check().unwrap_err();
        assert_eq!(stop.to_string(), "timed out after 20ms");
        assert_eq!(cancel.leave_subtest(), Some(stop));
        assert_eq!(cancel.check(), Ok(()), "the sub-test's limit ends with it");
        cancel.enter_subtest("slow", None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            cancel.check().unwrap_err().to_string(),
            "timed out after 80ms (in sub-test 'slow')"
        );
        cancel.set_file_limit(None);
        assert_eq!(cancel.check(), Ok(()));
        let child = Cancel::child(&cancel);
        assert_eq!(child.id(), cancel.id());
        child.enter_subtest("inner", Some(Duration::ZERO));
        assert!(matches!(child.check(), Err(Stop::SubtestTimeout { .. })));
        assert_eq!(cancel.check(), Ok(()), "a child's sub-test is its own");
        cancel.interrupt("SIGINT");
        assert_eq!(
            cancel.check().unwrap_err().to_string(),
            "interrupted by SIGINT"
        );
        assert_eq!(
            child.check().unwrap_err().to_string(),
            "interrupted by SIGINT"
        );
    }

    #[test]
    fn the_current_token_is_per_thread_and_sleep_wakes_early() {
        assert_eq!(checkpoint(), Ok(()));
        let cancel = Cancel::for_file(Some(Duration::from_millis(100)));
        let started = Instant::now();
        {
            let _entered = enter(&cancel);
            let elsewhere = std::thread::spawn(checkpoint).join().unwrap();
            assert_eq!(elsewhere, Ok(()), "other threads are not this file's");
            let woke = sleep(Duration::from_secs(30));
            assert!(matches!(woke, Err(Stop::FileTimeout { .. })));
            assert!(started.elapsed() < Duration::from_secs(2));
            assert!(current().is_some());
        }
        assert!(current().is_none(), "leaving restores the previous token");
    }
}
