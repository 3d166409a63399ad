//! Registry of child processes (QEMU) this run started, so that every exit path —
//! normal end, Ctrl-C, SIGTERM, a panic, a file that will not stop — can kill them.
//!
//! Each child is registered with the file it was started for (the thread's current
//! [`crate::cancel::Cancel`]), so the dispatcher can kill one file's VMs without
//! owning them.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Child process group leaders and the file that started each (`None`: no file).
static CHILDREN: Mutex<BTreeMap<i32, Option<usize>>> = Mutex::new(BTreeMap::new());

/// Records a child process group leader started on the calling thread; `kill_all`
/// (and `kill_owned_by` for its file) will SIGKILL its group.
pub fn register(pid: i32) {
    let owner = crate::cancel::current().map(|c| c.id());
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid, owner);
}

/// Forgets a child that has been reaped.
pub fn unregister(pid: i32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
}

fn kill(pids: impl IntoIterator<Item = i32>) {
    for pid in pids {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// SIGKILLs every registered child's process group. Safe to call more than once.
pub fn kill_all() {
    let pids: Vec<i32> = CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .copied()
        .collect();
    kill(pids);
}

/// SIGKILLs the children started for the file whose token has `owner` as its id.
pub fn kill_owned_by(owner: usize) {
    let pids: Vec<i32> = CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, o)| **o == Some(owner))
        .map(|(pid, _)| *pid)
        .collect();
    kill(pids);
}
