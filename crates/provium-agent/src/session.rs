//! Interactive sessions (`provium shell`, `vm:shell()`): a command in a session of
//! its own, on a pseudo-terminal or on pipes, whose input arrives in `Input`
//! messages and whose output leaves in `Output` messages while the request is
//! pending, until `SessionEnded` (docs/protocol.md, "Sessions").
//!
//! On a pty the command is the session leader with the pty as its controlling
//! terminal, so the guest's line discipline turns a Ctrl-C byte into SIGINT for the
//! foreground job and job control works as on a console. The master end is
//! non-blocking both ways: input the command has not read yet waits here, so a
//! command that neither reads nor stops writing can never block this loop.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use provium_proto::{AgentError, Frame, Message, PtySize, Response, STDERR, STDOUT};

use crate::channel::Mode;
use crate::channel::{Inbox, Outbox};
use crate::sys;

/// What the session's command is started with.
pub struct Spec {
    pub command: String,
    pub pty: Option<PtySize>,
    pub term: String,
}

/// The command's ends on this side: one descriptor for a pty (input and output),
/// three pipes otherwise.
enum Ends {
    /// `reading` turns false once every peer closed (the master then polls as hung
    /// up until a new peer opens it).
    Pty { master: OwnedFd, reading: bool },
    /// Each end is `None` once closed.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
}

const OP: &str = "session";

/// `TIOCGPTPEER` (Linux 4.13): opens the pty's other end from the master, without
/// going through a path in /dev/pts.
const TIOCGPTPEER: libc::c_ulong = 0x5441;

/// Runs the session of request `seq` until its command exits; frames of other
/// requests that arrive meanwhile go to `queued`. Never fails after the command
/// started: a channel that closes or a `Cancel` kills the command's group.
pub fn run(
    seq: u32,
    spec: Spec,
    inbox: &mut dyn Inbox,
    outbox: &dyn Outbox,
    queued: &mut VecDeque<Frame>,
    mode: Mode,
) -> Result<Response, AgentError> {
    let (ends, child_fds) = open_ends(spec.pty, mode)?;
    let pid = spawn(&spec, &child_fds)?;
    drop(child_fds);
    // SAFETY: pidfd_open takes no pointers; `pid` is our unreaped child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        let err = sys::os_error("pidfd_open");
        kill_group(pid, libc::SIGKILL);
        let _ = sys::wait_pid(pid);
        return Err(err);
    }
    // SAFETY: pidfd_open succeeded; the descriptor has no other owner.
    let exited = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut pump = Pump {
        seq,
        pid,
        ends,
        pending_input: Vec::new(),
        close_input_when_written: false,
        buf: vec![0u8; outbox.chunk().clamp(4096, 64 * 1024)],
    };
    pump.run(pid, &exited, inbox, outbox, queued);
    let status = sys::wait_pid(pid).map_err(|errno| AgentError::Os {
        op: format!("waitpid {pid}"),
        errno,
    })?;
    Ok(Response::SessionEnded {
        exit_code: sys::exit_code(status),
    })
}

/// The descriptors the command gets as 0, 1 and 2.
struct ChildFds([OwnedFd; 3]);

fn open_ends(pty: Option<PtySize>, mode: Mode) -> Result<(Ends, ChildFds), AgentError> {
    let Some(size) = pty else {
        let (in_r, in_w) = sys::pipe()?;
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        for end in [&in_w, &out_r, &err_r] {
            set_nonblocking(end);
        }
        return Ok((
            Ends::Pipes {
                stdin: Some(in_w),
                stdout: Some(out_r),
                stderr: Some(err_r),
            },
            ChildFds([in_r, out_w, err_w]),
        ));
    };
    let master = open_master(mode)?;
    // SAFETY: TIOCSPTLCK reads the int `unlock`; TIOCGPTPEER takes flags and returns
    // a new descriptor; TIOCSWINSZ reads the winsize `ws`. All on our master.
    let peer = unsafe {
        let unlock: libc::c_int = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(sys::os_error("unlock the pseudo-terminal"));
        }
        set_size(&master, size);
        libc::ioctl(
            master.as_raw_fd(),
            TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(sys::os_error(
            "open the pseudo-terminal's peer (TIOCGPTPEER)",
        ));
    }
    // SAFETY: the ioctl returned a new descriptor that nothing else owns.
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    set_nonblocking(&master);
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|_| sys::os_error("dup"));
    let fds = ChildFds([dup(&peer)?, dup(&peer)?, peer]);
    Ok((
        Ends::Pty {
            master,
            reading: true,
        },
        fds,
    ))
}

/// The master end of a new pty. In a guest, devpts is mounted on /dev/pts first
/// when it is not there yet (the agent's own userland mounts only the basics).
fn open_master(mode: Mode) -> Result<OwnedFd, AgentError> {
    let path = if mode == Mode::Guest {
        if !std::path::Path::new("/dev/pts/ptmx").exists() {
            let data = c"ptmxmode=0666,mode=0620";
            crate::files::mount_one("devpts", "/dev/pts", "devpts", 0, Some(data))?;
        }
        "/dev/pts/ptmx"
    } else {
        "/dev/ptmx"
    };
    let c_path = sys::cstring(path, OP, "ptmx path")?;
    // SAFETY: a NUL-terminated path alive for the call.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(AgentError::Path {
            op: "open a pseudo-terminal (a kernel with CONFIG_UNIX98_PTYS=y)".to_string(),
            path: path.to_string(),
            errno: sys::errno(),
        });
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_size(master: &OwnedFd, size: PtySize) {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize `ws`, alive for the call. The kernel
    // sends SIGWINCH to the terminal's foreground job when the size changed.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on a descriptor we own takes no pointers.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Starts `/bin/sh -c command` as a session leader on `fds`, with the pty (if it is
/// one) as its controlling terminal and `TERM` set for it.
fn spawn(spec: &Spec, fds: &ChildFds) -> Result<i32, AgentError> {
    let sh = sys::cstring("/bin/sh", OP, "shell path")?;
    let args = [
        sys::cstring("sh", OP, "shell name")?,
        sys::cstring("-c", OP, "shell flag")?,
        sys::cstring(&spec.command, OP, "command")?,
    ];
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != "TERM")
        .filter_map(|(k, v)| {
            let mut pair = k.into_encoded_bytes();
            pair.push(b'=');
            pair.extend(v.into_encoded_bytes());
            CString::new(pair).ok()
        })
        .collect();
    if spec.pty.is_some() && !spec.term.is_empty() {
        env.push(sys::cstring(&format!("TERM={}", spec.term), OP, "term")?);
    }
    if std::env::var_os("HOME").is_none() {
        env.push(c"HOME=/".to_owned());
    }
    if std::env::var_os("PATH").is_none() {
        env.push(c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let raw = [
        fds.0[0].as_raw_fd(),
        fds.0[1].as_raw_fd(),
        fds.0[2].as_raw_fd(),
    ];
    let is_pty = spec.pty.is_some();
    let failure = b"provium-agent: cannot execute /bin/sh\n";
    // SAFETY: the child makes only async-signal-safe calls on memory prepared before
    // the fork (the C strings, `argv`, `envp`, `raw`, `failure`), so locks other
    // threads held at the fork do not matter; it ends in exec or `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys::os_error("fork"));
    }
    if pid == 0 {
        // SAFETY: as above (the child between fork and exec).
        unsafe {
            libc::setsid();
            for (target, fd) in raw.iter().enumerate() {
                libc::dup2(*fd, target as i32);
            }
            if is_pty {
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            // A terminal's job control signals too: an interactive shell expects them.
            sys::child_signal_defaults(&[
                libc::SIGPIPE,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTSTP,
            ]);
            libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::write(2, failure.as_ptr().cast(), failure.len());
            libc::_exit(127);
        }
    }
    Ok(pid)
}

/// Sends `signal` to the session's process group, and to its leader in case it has
/// not called `setsid` yet.
fn kill_group(pid: i32, signal: i32) {
    // SAFETY: kill takes no pointers and touches no memory of ours.
    unsafe {
        libc::kill(-pid, signal);
        libc::kill(pid, signal);
    }
}

struct Pump {
    seq: u32,
    /// The command: the session's leader.
    pid: i32,
    ends: Ends,
    /// Input the command has not read yet.
    pending_input: Vec<u8>,
    /// The host ended the input; stdin closes once `pending_input` is written.
    close_input_when_written: bool,
    buf: Vec<u8>,
}

/// What one read of an output found.
#[derive(PartialEq, Eq)]
enum Read {
    Sent,
    Empty,
    Ended,
}

/// What one look at the channel found.
enum Heard {
    Nothing,
    /// The host gave up (a `Cancel`) or the channel closed.
    Stop,
}

impl Pump {
    fn run(
        &mut self,
        pid: i32,
        exited: &OwnedFd,
        inbox: &mut dyn Inbox,
        outbox: &dyn Outbox,
        queued: &mut VecDeque<Frame>,
    ) {
        loop {
            let (out_fds, in_fd) = self.fds();
            let mut pfds = vec![
                pollfd(exited.as_raw_fd(), libc::POLLIN),
                pollfd(inbox.fd(), libc::POLLIN),
                pollfd(
                    if self.pending_input.is_empty() {
                        -1
                    } else {
                        in_fd
                    },
                    libc::POLLOUT,
                ),
            ];
            pfds.extend(out_fds.iter().map(|fd| pollfd(*fd, libc::POLLIN)));
            // SAFETY: `pfds` holds the entries poll is told about.
            if unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) } < 0 {
                if sys::errno() == libc::EINTR {
                    continue;
                }
                kill_group(pid, libc::SIGKILL);
                return;
            }
            for (i, fd) in out_fds.iter().enumerate() {
                if pfds[3 + i].revents != 0 && self.forward_output(*fd, outbox) == Read::Ended {
                    self.close_output(*fd);
                }
            }
            if pfds[2].revents != 0 {
                self.write_input();
            }
            if pfds[1].revents != 0 {
                if let Heard::Stop = self.listen(inbox, queued) {
                    // No one reads the output any more: end the session's processes.
                    kill_group(pid, libc::SIGHUP);
                    kill_group(pid, libc::SIGKILL);
                    return;
                }
            }
            if pfds[0].revents != 0 {
                // The command exited; what it wrote is buffered on this side. A
                // job it left in the background may still hold the output open,
                // so read without waiting.
                for fd in self.fds().0 {
                    while self.forward_output(fd, outbox) == Read::Sent {}
                }
                return;
            }
        }
    }

    /// The output descriptors still open, and where input goes (-1 when nowhere).
    fn fds(&self) -> (Vec<i32>, i32) {
        match &self.ends {
            Ends::Pty { master, reading } => {
                let fd = master.as_raw_fd();
                (if *reading { vec![fd] } else { vec![] }, fd)
            }
            Ends::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let outs = [stdout, stderr]
                    .into_iter()
                    .flatten()
                    .map(|fd| fd.as_raw_fd())
                    .collect();
                (outs, stdin.as_ref().map_or(-1, |fd| fd.as_raw_fd()))
            }
        }
    }

    /// Reads once from `fd` (non-blocking) and sends what it read.
    fn forward_output(&mut self, fd: i32, outbox: &dyn Outbox) -> Read {
        let n = match sys::read_fd(fd, &mut self.buf) {
            Err(libc::EAGAIN) => return Read::Empty,
            // EIO: a pty whose every peer closed.
            Ok(0) | Err(_) => return Read::Ended,
            Ok(n) => n,
        };
        let stream = match &self.ends {
            Ends::Pipes {
                stderr: Some(stderr),
                ..
            } if stderr.as_raw_fd() == fd => STDERR,
            _ => STDOUT,
        };
        let message = Message::Output {
            stream,
            bytes: self.buf[..n].to_vec(),
        };
        if let Ok(frame) = provium_proto::encode_message(outbox.channel(), self.seq, &message) {
            // A host that stopped listening cancels the session; until then a
            // failed send loses this output only.
            outbox.data(&frame);
        }
        Read::Sent
    }

    /// Stops watching an output that ended: a pty whose every peer closed (EIO),
    /// a pipe at its end. The command's exit ends the session, not this.
    fn close_output(&mut self, fd: i32) {
        match &mut self.ends {
            Ends::Pty { reading, .. } => *reading = false,
            Ends::Pipes { stdout, stderr, .. } => {
                for end in [stdout, stderr] {
                    if end.as_ref().is_some_and(|e| e.as_raw_fd() == fd) {
                        *end = None;
                    }
                }
            }
        }
    }

    fn write_input(&mut self) {
        let fd = self.fds().1;
        if fd < 0 {
            self.pending_input.clear();
            return;
        }
        // SAFETY: the kernel reads at most the buffer's length from it.
        let n = unsafe {
            libc::write(
                fd,
                self.pending_input.as_ptr().cast(),
                self.pending_input.len(),
            )
        };
        if n > 0 {
            self.pending_input.drain(..n as usize);
        } else if n < 0 && !matches!(sys::errno(), libc::EAGAIN | libc::EINTR) {
            // The command closed its stdin: what it did not read is dropped.
            self.pending_input.clear();
        }
        if self.pending_input.is_empty() && self.close_input_when_written {
            self.close_input();
        }
    }

    fn close_input(&mut self) {
        if let Ends::Pipes { stdin, .. } = &mut self.ends {
            *stdin = None;
        }
    }

    /// Takes the frames that arrived: this session's input and resizes are applied,
    /// frames of other requests kept for the serve loop.
    fn listen(&mut self, inbox: &mut dyn Inbox, queued: &mut VecDeque<Frame>) -> Heard {
        let mut arrived = VecDeque::new();
        let mut heard = if inbox.take_ready(&mut arrived) {
            Heard::Nothing
        } else {
            Heard::Stop
        };
        for frame in arrived {
            if !is_session_frame(&frame) {
                // A cancel of this session, or a frame for the serve loop (the next
                // request may arrive right behind the cancel).
                match crate::channel::cancel_of(&frame) {
                    Some(seq) if seq == self.seq => heard = Heard::Stop,
                    _ => queued.push_back(frame),
                }
                continue;
            }
            match frame.message() {
                Ok(Message::Input { bytes }) if frame.seq == self.seq => {
                    if bytes.is_empty() {
                        self.end_of_input();
                    } else {
                        self.pending_input.extend_from_slice(&bytes);
                        self.write_input();
                    }
                }
                Ok(Message::Resize { rows, cols }) if frame.seq == self.seq => {
                    if let Ends::Pty { master, .. } = &self.ends {
                        set_size(master, PtySize { rows, cols });
                    }
                }
                // Input for a session that ended, or damaged: dropped.
                _ => {}
            }
        }
        heard
    }

    /// The host's input ended: stdin closes (once what is pending is written); a
    /// terminal hangs up, as a modem line would, which ends its shell.
    fn end_of_input(&mut self) {
        match &self.ends {
            Ends::Pipes { .. } => {
                self.close_input_when_written = true;
                if self.pending_input.is_empty() {
                    self.close_input();
                }
            }
            Ends::Pty { master, .. } => {
                // The terminal's foreground job (a job-control shell runs it in a group
                // of its own), then the leader and its group — by pid, which also
                // reaches a leader that has not made the terminal its own yet.
                let mut foreground: libc::pid_t = 0;
                // SAFETY: TIOCGPGRP writes the foreground process group into `foreground`.
                if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPGRP, &mut foreground) } == 0
                    && foreground > 0
                {
                    // SAFETY: kill takes no pointers.
                    unsafe { libc::kill(-foreground, libc::SIGHUP) };
                }
                kill_group(self.pid, libc::SIGHUP);
            }
        }
    }
}

/// Whether a frame is session traffic (input, a resize), whatever its request.
pub fn is_session_frame(frame: &Frame) -> bool {
    matches!(
        frame.payload.first(),
        Some(&provium_proto::TAG_INPUT | &provium_proto::TAG_RESIZE)
    )
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
