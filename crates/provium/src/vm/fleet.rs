//! The VMs of one test file: each VM's handle (created, running, or ended and how),
//! and the policy that ends them — `shutdown`, `kill`, a VM found dead, the file's end.
//!
//! A [`VmHandle`] outlives its VM: after a shutdown, a kill or a death, calls on it say
//! how the VM ended instead of failing obscurely. The [`Fleet`] walks them all, so
//! nothing a file started outlives the file.

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::rc::Rc;

use thiserror::Error;

use super::client::{AgentClient, ClientError};
use super::{ShutdownOutcome, Vm, SHUTDOWN_GRACE};

/// A call on a handle whose VM is not there to answer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("VM {vm} is already running; shut it down before booting it again")]
    AlreadyRunning { vm: String },
    #[error("VM {vm}: {op}: the VM is not booted (call vm:boot() first)")]
    NotBooted { vm: String, op: &'static str },
    #[error("VM {vm}: {op}: the VM {how}")]
    Ended {
        vm: String,
        op: &'static str,
        how: String,
    },
}

/// How a VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    ShutDown,
    Killed,
    /// The guest stopped answering (QEMU exited, kernel panic, agent died).
    Died(String),
    /// Taken out by [`Fleet::take_last_running`] (a fixture script's VM, to snapshot).
    HandedOver,
}

impl Ending {
    fn describe(&self) -> String {
        match self {
            Ending::ShutDown => "was shut down (vm:shutdown())".to_string(),
            Ending::Killed => "was killed (vm:kill(), or its file ended)".to_string(),
            Ending::Died(reason) => format!("broke earlier: {reason}"),
            Ending::HandedOver => "was handed over to be snapshotted".to_string(),
        }
    }
}

enum VmState {
    Created,
    Running(Box<Vm>),
    Ended(Ending),
}

/// How a VM is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Power off, killing QEMU after [`SHUTDOWN_GRACE`].
    Shutdown,
    Kill,
}

/// A VM's NIC on one of its file's networks, as the test sees it (`vm:ip(net)`,
/// `vm:mac(net)`, `vm:ifname(net)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicInfo {
    pub network: String,
    /// The guest's name for it (`eth0`).
    pub ifname: String,
    pub address: std::net::Ipv4Addr,
    pub mac: String,
}

/// One VM a file created, shared by its Lua handle and its workers.
pub struct VmHandle {
    /// `<file>#<n>`: unique within the run, shown in every error.
    name: String,
    profile: String,
    state: RefCell<VmState>,
    /// Its NICs on networks, from its last boot.
    nics: RefCell<Vec<NicInfo>>,
}

impl VmHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn profile(&self) -> &str {
        &self.profile
    }

    pub fn is_running(&self) -> bool {
        matches!(*self.state.borrow(), VmState::Running(_))
    }

    /// Its NICs on networks (set at boot).
    pub fn nics(&self) -> Vec<NicInfo> {
        self.nics.borrow().clone()
    }

    pub fn set_nics(&self, nics: Vec<NicInfo>) {
        *self.nics.borrow_mut() = nics;
    }

    /// Where the running VM's gdb stub listens, if it has one.
    pub fn gdb_address(&self) -> Option<String> {
        match &*self.state.borrow() {
            VmState::Running(vm) => vm.gdb_address(),
            _ => None,
        }
    }

    /// Refuses a boot of a handle that already runs a VM.
    pub fn check_bootable(&self) -> Result<(), HandleError> {
        if self.is_running() {
            Err(HandleError::AlreadyRunning {
                vm: self.name.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// Hands a booted VM to this handle.
    pub fn set_running(&self, vm: Vm) {
        *self.state.borrow_mut() = VmState::Running(Box::new(vm));
    }

    /// The main-channel client of the running VM, or why there is none.
    pub fn client(&self, op: &'static str) -> Result<AgentClient, HandleError> {
        match &*self.state.borrow() {
            VmState::Running(vm) => Ok(vm.client().clone()),
            VmState::Created => Err(HandleError::NotBooted {
                vm: self.name.clone(),
                op,
            }),
            VmState::Ended(how) => Err(HandleError::Ended {
                vm: self.name.clone(),
                op,
                how: how.describe(),
            }),
        }
    }

    /// Passes `result` through; when it says the VM broke, the VM is ended now, so
    /// its resources return to the pool before the file goes on (perhaps to boot
    /// another VM), and later calls say it broke.
    pub fn observe<T>(&self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(error) = &result {
            if let Some(reason) = error.broke() {
                if let Some(vm) = self.take_running(Ending::Died(reason.to_string())) {
                    stop_vm(vm, Stop::Kill);
                }
            }
        }
        result
    }

    /// Ends the VM if it runs; returns how it went, for the file's log.
    pub fn stop(&self, stop: Stop) -> Option<String> {
        let ending = match stop {
            Stop::Shutdown => Ending::ShutDown,
            Stop::Kill => Ending::Killed,
        };
        self.take_running(ending).map(|vm| stop_vm(vm, stop))
    }

    /// Takes the VM out of the handle, leaving `ending`; `None` when it was not running.
    fn take_running(&self, ending: Ending) -> Option<Box<Vm>> {
        let mut state = self.state.borrow_mut();
        if !matches!(*state, VmState::Running(_)) {
            return None;
        }
        match std::mem::replace(&mut *state, VmState::Ended(ending)) {
            VmState::Running(vm) => Some(vm),
            _ => None,
        }
    }
}

/// The VMs one test file created, in creation order.
#[derive(Default)]
pub struct Fleet {
    handles: RefCell<Vec<Rc<VmHandle>>>,
}

impl Fleet {
    /// A new, not yet booted VM of `profile`, named `<file>#<n>`.
    pub fn create(&self, file: &str, profile: &str) -> Rc<VmHandle> {
        let number = self.handles.borrow().len() + 1;
        self.push(VmHandle {
            name: format!("{file}#{number}"),
            profile: profile.to_string(),
            state: RefCell::new(VmState::Created),
            nics: RefCell::new(Vec::new()),
        })
    }

    /// Gives an already booted `vm` (e.g. one resumed from a fixture) a handle here.
    pub fn adopt(&self, vm: Vm, profile: &str) -> Rc<VmHandle> {
        self.push(VmHandle {
            name: vm.name().to_string(),
            profile: profile.to_string(),
            state: RefCell::new(VmState::Running(Box::new(vm))),
            nics: RefCell::new(Vec::new()),
        })
    }

    fn push(&self, handle: VmHandle) -> Rc<VmHandle> {
        let handle = Rc::new(handle);
        self.handles.borrow_mut().push(Rc::clone(&handle));
        handle
    }

    fn running(&self) -> Vec<Rc<VmHandle>> {
        self.handles
            .borrow()
            .iter()
            .filter(|h| h.is_running())
            .cloned()
            .collect()
    }

    /// Kills every VM still running (the file ended); returns `(vm, what happened)`.
    pub fn kill_running(&self) -> Vec<(String, String)> {
        self.running()
            .iter()
            .filter_map(|h| h.stop(Stop::Kill).map(|note| (h.name.clone(), note)))
            .collect()
    }

    /// Shuts down every running VM, in parallel (each may wait for its guest).
    pub fn shutdown_all(&self) -> Vec<(String, String)> {
        let stopping: Vec<(String, Box<Vm>)> = self
            .running()
            .iter()
            .filter_map(|h| {
                h.take_running(Ending::ShutDown)
                    .map(|vm| (h.name.clone(), vm))
            })
            .collect();
        std::thread::scope(|scope| {
            let threads: Vec<_> = stopping
                .into_iter()
                .map(|(name, vm)| scope.spawn(move || (name, stop_vm(vm, Stop::Shutdown))))
                .collect();
            threads.into_iter().filter_map(|t| t.join().ok()).collect()
        })
    }

    /// The most recently created VM that is running (`--shell-on-failure` opens its
    /// shell there).
    pub fn last_running(&self) -> Option<Rc<VmHandle>> {
        self.handles
            .borrow()
            .iter()
            .rev()
            .find(|h| h.is_running())
            .cloned()
    }

    /// The most recently created VM, taken out of its handle if it is still running
    /// (a fixture script's VM, to snapshot); its handle then says it was handed over.
    pub fn take_last_running(&self) -> Option<Vm> {
        let last = self.handles.borrow().last().cloned()?;
        last.take_running(Ending::HandedOver).map(|vm| *vm)
    }
}

/// Ends `vm` and says how it went. A guest whose kernel panicked is left a moment to
/// finish (it powers off by itself: panic=-1 with -no-reboot), and its console gets
/// a closing line naming the panic: the kernel's trace outruns the console tail the
/// report shows, and the panic line is the point.
fn stop_vm(mut vm: Box<Vm>, stop: Stop) -> String {
    let panic = vm.panic_line();
    let note = match (stop, &panic) {
        (Stop::Kill, None) => {
            vm.kill();
            "killed".to_string()
        }
        (_, Some(_)) | (Stop::Shutdown, None) => match vm.shutdown() {
            ShutdownOutcome::PoweredOff if panic.is_some() => {
                "its kernel panicked; QEMU exited".to_string()
            }
            ShutdownOutcome::PoweredOff => "powered off".to_string(),
            ShutdownOutcome::Killed => format!(
                "did not power off within {}s; killed",
                SHUTDOWN_GRACE.as_secs()
            ),
            ShutdownOutcome::AlreadyStopped => "already stopped".to_string(),
        },
    };
    if let Some(panic) = panic {
        // QEMU has been reaped, so its console reader is done with the file.
        let appended = fs::OpenOptions::new()
            .append(true)
            .open(vm.console_log())
            .and_then(|mut log| {
                writeln!(
                    log,
                    "provium: VM {}: the kernel panicked: {panic}",
                    vm.name()
                )
            });
        if let Err(e) = appended {
            return format!("{note} (cannot note the panic in its console log: {e})");
        }
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_say_why_they_cannot_answer() {
        let fleet = Fleet::default();
        let vm = fleet.create("a.lua", "default");
        assert_eq!(vm.name(), "a.lua#1");
        assert_eq!(fleet.create("a.lua", "default").name(), "a.lua#2");
        assert_eq!(
            vm.client("exec").unwrap_err().to_string(),
            "VM a.lua#1: exec: the VM is not booted (call vm:boot() first)"
        );
        assert_eq!(vm.check_bootable(), Ok(()));
        assert_eq!(
            vm.stop(Stop::Kill),
            None,
            "stopping what never ran is a no-op"
        );
        assert!(fleet.kill_running().is_empty());
        assert!(fleet.shutdown_all().is_empty());
        assert!(fleet.take_last_running().is_none());
    }
}
