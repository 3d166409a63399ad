//! Registry of child processes (QEMU) this run started, so that every exit path —
//! normal end, Ctrl-C, SIGTERM, a panic — can kill them all.

use std::collections::BTreeSet;
use std::sync::Mutex;

static CHILDREN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Records a child process group leader; `kill_all` will SIGKILL its group.
pub fn register(pid: i32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid);
}

/// Forgets a child that has been reaped.
pub fn unregister(pid: i32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
}

/// SIGKILLs every registered child's process group. Safe to call more than once.
pub fn kill_all() {
    let pids: Vec<i32> = CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .collect();
    for pid in pids {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
