//! A shell in a guest wired to this process's terminal (`provium shell`,
//! `vm:shell()`): the host half of a session the agent runs (docs/protocol.md,
//! "Sessions").
//!
//! On a terminal ([`ShellMode::Terminal`]) the guest shell gets a pseudo-terminal of
//! the local window's size, and the local terminal goes to raw mode, so every key —
//! Ctrl-C, Ctrl-Z, Ctrl-D, arrows — reaches the guest's line discipline as a byte, and
//! the guest, not provium, turns Ctrl-C into a SIGINT for its foreground job. A
//! SIGWINCH resizes the guest's terminal. Without a terminal ([`ShellMode::Pipes`])
//! the command (or `sh` reading the script on stdin) gets pipes: stdin is forwarded
//! until its end, stdout and stderr come back on their own streams.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use super::client::{AgentClient, ClientError, SessionEvent, SessionSpec};
use crate::tty::{self, RawMode, WinchWatch};

/// How the shell meets the person (or script) at this end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellMode {
    /// An interactive shell on a pty, on the local terminal in raw mode.
    Terminal,
    /// `command` with `sh -c`, or `sh` reading stdin when `None`; no pty.
    Pipes { command: Option<String> },
}

/// How long one wait for the guest's output lasts before stdin is looked at again:
/// the keystroke latency bound.
const POLL: Duration = Duration::from_millis(10);

/// The guest shell the terminal mode runs: a login shell, so the profile's
/// environment applies.
const LOGIN_SHELL: &str = "exec /bin/sh -l";

/// Runs the shell until it exits; returns its exit status (128+N for a signal).
/// `banner` is printed first (on a terminal), on its own line.
pub fn attach(
    client: &AgentClient,
    mode: ShellMode,
    banner: Option<&str>,
) -> Result<i32, ClientError> {
    match mode {
        ShellMode::Terminal => attach_terminal(client, banner),
        ShellMode::Pipes { command } => attach_pipes(client, command),
    }
}

fn attach_terminal(client: &AgentClient, banner: Option<&str>) -> Result<i32, ClientError> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let size = tty::window_size(stdout.as_fd()).unwrap_or(tty::WindowSize { rows: 24, cols: 80 });
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".to_string());
    let _hold = tty::hold_terminal();
    if let Some(banner) = banner {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{banner}");
        let _ = out.flush();
    }
    let session = client.open_session(SessionSpec {
        command: LOGIN_SHELL.to_string(),
        pty: Some((size.rows, size.cols)),
        term,
    })?;
    let winch = WinchWatch::install();
    // Restored when this returns, whatever happened (also on a broken VM).
    let _raw = RawMode::enter(stdin.as_fd()).ok();
    let mut input = [0u8; 4096];
    loop {
        crate::cancel::checkpoint().map_err(|stop| client.stopped(stop))?;
        if winch.changed() {
            if let Some(size) = tty::window_size(stdout.as_fd()) {
                session.resize(size.rows, size.cols)?;
            }
        }
        match readable(stdin.as_raw_fd(), Duration::ZERO) {
            Readable::Yes => match read_fd(stdin.as_raw_fd(), &mut input) {
                // A terminal that reads end-of-file is gone (hung up): end the shell
                // as the guest's own hangup would.
                Some(0) => session.hang_up()?,
                Some(n) => session.send(&input[..n])?,
                None => {}
            },
            Readable::No | Readable::Closed => {}
        }
        if let Some(status) = drain(&session, POLL)? {
            return Ok(status);
        }
    }
}

fn attach_pipes(client: &AgentClient, command: Option<String>) -> Result<i32, ClientError> {
    let session = client.open_session(SessionSpec {
        // Without a command: a shell reading its script from stdin.
        command: command.unwrap_or_else(|| "exec /bin/sh -s".to_string()),
        pty: None,
        term: String::new(),
    })?;
    let stdin = io::stdin();
    let mut input = [0u8; 64 * 1024];
    let mut stdin_open = true;
    loop {
        crate::cancel::checkpoint().map_err(|stop| client.stopped(stop))?;
        if stdin_open {
            match readable(stdin.as_raw_fd(), Duration::ZERO) {
                Readable::Yes => match read_fd(stdin.as_raw_fd(), &mut input) {
                    Some(0) => {
                        stdin_open = false;
                        session.close_input()?;
                    }
                    Some(n) => session.send(&input[..n])?,
                    None => {}
                },
                Readable::Closed => {
                    stdin_open = false;
                    session.close_input()?;
                }
                Readable::No => {}
            }
        }
        if let Some(status) = drain(&session, POLL)? {
            return Ok(status);
        }
    }
}

/// Writes what the guest sent within `wait` to stdout/stderr; `Some(status)` once the
/// shell exited (all its output written).
fn drain(session: &super::client::Session, wait: Duration) -> Result<Option<i32>, ClientError> {
    let mut wait = wait;
    while let Some(event) = session.next(wait)? {
        wait = Duration::ZERO;
        match event {
            SessionEvent::Stdout(data) => write_all(&mut io::stdout().lock(), &data),
            SessionEvent::Stderr(data) => write_all(&mut io::stderr().lock(), &data),
            SessionEvent::Exit(status) => return Ok(Some(status)),
        }
    }
    Ok(None)
}

fn write_all(out: &mut impl Write, data: &[u8]) {
    // A closed stdout (a pipe whose reader left) must not end the guest's shell: its
    // output is dropped, as a shell's would be on EPIPE.
    let _ = out.write_all(data);
    let _ = out.flush();
}

enum Readable {
    Yes,
    No,
    /// Hung up or invalid: nothing will ever come.
    Closed,
}

fn readable(fd: i32, wait: Duration) -> Readable {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd we own.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n <= 0 {
        return Readable::No;
    }
    if pfd.revents & libc::POLLIN != 0 {
        Readable::Yes
    } else if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        Readable::Closed
    } else {
        Readable::No
    }
}

/// One read of stdin: `Some(0)` at its end, `None` when interrupted (try again).
fn read_fd(fd: i32, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: reads into the buffer we own, at most its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        return Some(n as usize);
    }
    match io::Error::last_os_error().kind() {
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => None,
        // An unreadable stdin is an ended one.
        _ => Some(0),
    }
}
