//! Console logging: one line per event, prefixed, written whole with one `write`.

use std::sync::atomic::{AtomicI32, Ordering};

static LOG_FD: AtomicI32 = AtomicI32::new(2);

/// Sends later log lines to `fd` (the guest console).
pub fn set_fd(fd: i32) {
    LOG_FD.store(fd, Ordering::Relaxed);
}

pub fn line(msg: &str) {
    let text = format!("provium-agent: {msg}\n");
    // Logging must never fail the agent; a lost line is acceptable.
    // SAFETY: the kernel reads at most `text.len()` bytes from `text`.
    unsafe {
        libc::write(
            LOG_FD.load(Ordering::Relaxed),
            text.as_ptr().cast(),
            text.len(),
        );
    }
}

macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(&format!($($arg)*))
    };
}
pub(crate) use log;

/// The descriptor log lines go to (kept open in forked workers).
pub fn fd() -> i32 {
    LOG_FD.load(Ordering::Relaxed)
}
