//! The local terminal, for the interactive shell (`provium shell`, `vm:shell()`): raw
//! mode that is always restored, the window size, and SIGWINCH. A low-level module:
//! it knows nothing of VMs.

use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Whether an interactive shell has the terminal: the live status line must not be
/// drawn over it. The reporter draws under this lock, so taking the terminal waits
/// for a line being drawn.
static HELD: Mutex<bool> = Mutex::new(false);

/// The terminal belongs to an interactive shell while this lives.
pub struct TerminalHold(());

/// Takes the terminal for an interactive shell: the status line stops being drawn,
/// and the one on screen is erased.
pub fn hold_terminal() -> TerminalHold {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    *held = true;
    let mut out = io::stdout().lock();
    let _ = out.write_all(b"\r\x1b[K");
    let _ = out.flush();
    TerminalHold(())
}

impl Drop for TerminalHold {
    fn drop(&mut self) {
        *HELD.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

/// Runs `draw` unless a shell holds the terminal (then `None`); the live status line
/// is drawn through this.
pub fn unless_held<R>(draw: impl FnOnce() -> R) -> Option<R> {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    (!*held).then(draw)
}

/// Whether both stdin and stdout are terminals: what an interactive shell needs.
pub fn interactive() -> bool {
    io::stdin().is_terminal() && io::stdout().is_terminal()
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// The window size of the terminal on `fd`; `None` when it is no terminal or reports
/// no size (0×0, as some serial consoles do).
pub fn window_size(fd: BorrowedFd<'_>) -> Option<WindowSize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (ret == 0 && size.ws_row > 0 && size.ws_col > 0).then_some(WindowSize {
        rows: size.ws_row,
        cols: size.ws_col,
    })
}

/// Sets the window size of the terminal on `fd` (tests: the far end of a pty).
pub fn set_window_size(fd: BorrowedFd<'_>, size: WindowSize) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the struct we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The terminal on a file descriptor in raw mode until this is dropped: no echo, no
/// line editing, no signals from keys (Ctrl-C, Ctrl-Z, Ctrl-\ travel to the guest as
/// bytes, where the guest's terminal turns them into signals for its foreground job),
/// no output processing. Dropping restores the settings it found, on every path.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    pub fn enter(fd: BorrowedFd<'_>) -> io::Result<RawMode> {
        let fd = fd.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is borrowed and open; saved is ours.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: as above.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores what `enter` read from the same descriptor; TCSAFLUSH
        // also drops typed-ahead input meant for the guest.
        unsafe { libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.saved) };
    }
}

static WINCH: AtomicBool = AtomicBool::new(false);

extern "C" fn on_winch(_: libc::c_int) {
    WINCH.store(true, Ordering::SeqCst);
}

/// Notices SIGWINCH (the local terminal was resized) while it lives.
pub struct WinchWatch {
    previous: libc::sighandler_t,
}

impl WinchWatch {
    pub fn install() -> WinchWatch {
        WINCH.store(false, Ordering::SeqCst);
        let handler = on_winch as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        let previous = unsafe { libc::signal(libc::SIGWINCH, handler) };
        WinchWatch { previous }
    }

    /// Whether the window changed since the last call.
    pub fn changed(&self) -> bool {
        WINCH.swap(false, Ordering::SeqCst)
    }
}

impl Drop for WinchWatch {
    fn drop(&mut self) {
        // SAFETY: puts back the disposition `install` replaced.
        unsafe { libc::signal(libc::SIGWINCH, self.previous) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    /// A real pseudo-terminal: (controller, terminal).
    fn pty() -> (OwnedFd, OwnedFd) {
        let (mut controller, mut terminal) = (0, 0);
        // SAFETY: openpty writes two descriptors we then own.
        let ret = unsafe {
            libc::openpty(
                &mut controller,
                &mut terminal,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(ret, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: both are fresh descriptors owned by nobody else.
        unsafe {
            (
                OwnedFd::from_raw_fd(controller),
                OwnedFd::from_raw_fd(terminal),
            )
        }
    }

    fn lflag(fd: BorrowedFd<'_>) -> libc::tcflag_t {
        // SAFETY: as in RawMode::enter.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
        t.c_lflag
    }

    #[test]
    fn raw_mode_is_entered_and_restored() {
        let (_controller, terminal) = pty();
        let before = lflag(terminal.as_fd());
        assert_ne!(before & libc::ECHO, 0, "a fresh pty echoes");
        {
            let _raw = RawMode::enter(terminal.as_fd()).unwrap();
            let raw = lflag(terminal.as_fd());
            assert_eq!(raw & (libc::ECHO | libc::ICANON | libc::ISIG), 0);
        }
        assert_eq!(lflag(terminal.as_fd()), before);
    }

    #[test]
    fn raw_mode_on_a_pipe_is_an_error() {
        let (read, _write) = std::io::pipe().unwrap();
        assert!(RawMode::enter(read.as_fd()).is_err());
        assert_eq!(window_size(read.as_fd()), None);
    }

    #[test]
    fn window_size_reads_what_was_set() {
        let (controller, terminal) = pty();
        let size = WindowSize {
            rows: 37,
            cols: 101,
        };
        set_window_size(controller.as_fd(), size).unwrap();
        assert_eq!(window_size(terminal.as_fd()), Some(size));
    }

    #[test]
    fn sigwinch_is_noticed() {
        let watch = WinchWatch::install();
        assert!(!watch.changed());
        // SAFETY: raising a signal whose handler only stores to an atomic.
        unsafe { libc::raise(libc::SIGWINCH) };
        assert!(watch.changed());
        assert!(!watch.changed());
    }
}
