//! The agent's side of the link: handshake, quiesce, and routing of frames by channel.
//!
//! The router reads the link, checks each frame once and routes it by its channel
//! and its first payload byte, without decoding what it forwards. The main channel
//! and thread workers are served by threads of this process: their frames move to
//! them through a mailbox and they write their answers to the link themselves. A
//! process worker gets its frames over a socket pair; a relay thread copies its
//! answers back. So the router keeps reading the link (and crediting the UART)
//! while any channel performs a request, and a large transfer crosses no extra hop.
//!
//! A thread that serves a channel can die alone (a test's raw `exit`, a seccomp
//! kill) without closing anything the router would see: its mailbox and the link
//! stay open, and nothing wakes. So while such a channel performs a request, a
//! watchdog thread checks every [`THREAD_POLL`] that its thread still exists
//! (`tgkill(pid, tid, 0)`), and fails the request when it does not; a request sent
//! to a thread already gone is refused at once. Polling was chosen over the
//! kernel's exit notification (`CLONE_CHILD_CLEARTID`): the thread library already
//! owns that word for each thread and frees the thread's memory when it is seen
//! cleared, and nothing else reports a single thread's end on this kernel (a pidfd
//! for a thread needs Linux 6.9). The check costs one syscall per poll while a
//! request runs, and nothing while the channel is idle.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use provium_proto::{
    encode_frame, encode_message, is_partial_answer, op_name_of_tag, AgentError, Frame,
    FrameReader, Message, ProtoError, Request, Response, DATA_CHUNK, MAIN_CHANNEL,
    PROTOCOL_VERSION, TAG_DATA, TAG_INPUT, TAG_RESIZE, UART_DATA_CHUNK,
};

use crate::channel::Mode;
use crate::channel::{encode_answer, lock, Mailbox, Outbox, SocketInbox, SocketOutbox};
use crate::log::{self, log};
use crate::serve;
use crate::sys;

/// What carries the link; decides what end-of-file means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A virtio-serial port reads EOF while no host is connected: wait for one.
    Virtio,
    /// The ttyS1 fallback never reaches EOF.
    Uart,
    /// `--serve-unix`: EOF ends this connection; the caller accepts the next.
    Unix,
}

/// How long to wait before reading a virtio port again after EOF (no host attached).
const HOST_ABSENT_RETRY: Duration = Duration::from_millis(20);

/// On the UART, a `Credit` goes back once this many bytes have been read off the
/// tty. Must not exceed the host's window (`UART_WINDOW` in the host's link.rs,
/// 16 KiB), or the host would wait for a credit that never comes.
const CREDIT_BATCH: usize = 4 * 1024;

/// While a thread-served channel performs a request, how often the router checks
/// that the thread still exists: a dead thread's request fails within this.
const THREAD_POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy)]
enum WorkerKind {
    Process(i32),
    Thread(i32),
}

/// How frames reach a channel's request loop.
enum Route {
    /// A thread of this process.
    Mailbox(Arc<Mailbox>),
    /// A forked worker: its inbound thread writes the frames into its socket pair.
    Socket { to_worker: Sender<Vec<u8>> },
}

/// The request a channel is performing.
struct Pending {
    seq: u32,
    op: &'static str,
}

struct Channel {
    route: Route,
    kind: WorkerKind,
    /// Why the channel can no longer answer, once it cannot.
    gone: Option<String>,
    pending: Option<Pending>,
}

/// What the router shares with the threads that serve channels or relay answers.
struct Shared {
    writer: Mutex<Option<File>>,
    channels: Mutex<HashMap<u32, Channel>>,
    /// Signalled (with `channels`) when a thread-served channel starts a request.
    thread_busy: Condvar,
    /// Data bytes per `Data` frame on the current link.
    chunk: AtomicUsize,
}

impl Shared {
    fn send(&self, channel: u32, seq: u32, msg: &Message) {
        match encode_message(channel, seq, msg) {
            Ok(frame) => {
                self.send_frame(&frame);
            }
            Err(e) => log!("cannot encode a message on channel {channel}: {e}"),
        }
    }

    /// Writes a whole frame to the link; false when there is no link or it failed.
    fn send_frame(&self, frame: &[u8]) -> bool {
        match lock(&self.writer).as_mut() {
            Some(w) => match w.write_all(frame) {
                Ok(()) => true,
                Err(e) => {
                    log!("link write failed: {e}");
                    false
                }
            },
            None => false,
        }
    }

    fn refuse(&self, channel: u32, seq: u32, err: AgentError) {
        self.send(channel, seq, &Message::Response(Response::Error(err)));
    }

    /// Ends `channel` (the first reason given stays) and fails the request it was
    /// performing.
    fn end_channel(&self, channel: u32, reason: String) {
        let (reason, pending) = {
            let mut channels = lock(&self.channels);
            let Some(ch) = channels.get_mut(&channel) else {
                return;
            };
            let reason = ch.gone.get_or_insert(reason).clone();
            (reason, ch.pending.take())
        };
        log!("channel {channel}: {reason}");
        if let Some(p) = pending {
            self.refuse(channel, p.seq, AgentError::WorkerGone { channel, reason });
        }
    }

    /// Marks `seq`'s request on `channel` answered; false when the channel is gone
    /// (its answer is then dropped: the host was already told).
    fn answered(&self, channel: u32, seq: u32) -> bool {
        let mut channels = lock(&self.channels);
        let Some(ch) = channels.get_mut(&channel) else {
            return true;
        };
        if ch.gone.is_some() {
            return false;
        }
        if ch.pending.as_ref().is_some_and(|p| p.seq == seq) {
            ch.pending = None;
        }
        true
    }

    fn is_gone(&self, channel: u32) -> bool {
        lock(&self.channels)
            .get(&channel)
            .is_some_and(|ch| ch.gone.is_some())
    }

    /// Fails the requests of thread-served channels whose thread has died; runs for
    /// the life of the agent, waiting while no such channel performs a request.
    fn watch_threads(&self) {
        let mut channels = lock(&self.channels);
        loop {
            if busy_threads(&channels).is_empty() {
                channels = self
                    .thread_busy
                    .wait(channels)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            drop(channels);
            std::thread::sleep(THREAD_POLL);
            let busy = busy_threads(&lock(&self.channels));
            for (channel, tid, op) in busy {
                if !thread_alive(tid) {
                    self.end_channel(channel, thread_ended(tid, Some(op)));
                }
            }
            channels = lock(&self.channels);
        }
    }
}

/// The thread-served channels performing a request: (channel, thread, operation).
fn busy_threads(channels: &HashMap<u32, Channel>) -> Vec<(u32, i32, &'static str)> {
    channels
        .iter()
        .filter_map(|(&channel, ch)| match (ch.kind, &ch.pending, &ch.gone) {
            (WorkerKind::Thread(tid), Some(p), None) => Some((channel, tid, p.op)),
            _ => None,
        })
        .collect()
}

/// A thread-served channel's answers: straight onto the link.
struct LinkOutbox {
    shared: Arc<Shared>,
    channel: u32,
}

impl Outbox for LinkOutbox {
    fn data(&self, frame: &[u8]) -> bool {
        !self.shared.is_gone(self.channel) && self.shared.send_frame(frame)
    }

    fn answer(&self, seq: u32, response: Response) {
        let Some(frame) = encode_answer(self.channel, seq, response) else {
            return;
        };
        if self.shared.answered(self.channel, seq) {
            self.shared.send_frame(&frame);
        }
    }

    fn chunk(&self) -> usize {
        self.shared.chunk.load(Ordering::Relaxed)
    }

    fn channel(&self) -> u32 {
        self.channel
    }
}

/// Whether thread `tid` of this process still exists: `tgkill` with signal 0 checks
/// without sending anything, and fails with ESRCH once the thread has exited (the
/// kernel releases an exited thread other than the leader at once).
fn thread_alive(tid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; tgkill takes no pointers.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) };
    ret == 0 || sys::errno() != libc::ESRCH
}

fn thread_ended(tid: i32, op: Option<&str>) -> String {
    match op {
        Some(op) => {
            format!("its thread {tid} ended during {op} (it exited, or the kernel killed it)")
        }
        None => format!("its thread {tid} ended (it exited, or the kernel killed it)"),
    }
}

pub struct Router {
    mode: Mode,
    shared: Arc<Shared>,
    next_channel: u32,
    accepted: bool,
    quiesced: bool,
}

impl Router {
    /// A router with the main channel already being served.
    pub fn new(mode: Mode) -> Result<Router, String> {
        let router = Router {
            mode,
            shared: Arc::new(Shared {
                writer: Mutex::new(None),
                channels: Mutex::new(HashMap::new()),
                thread_busy: Condvar::new(),
                chunk: AtomicUsize::new(DATA_CHUNK),
            }),
            next_channel: MAIN_CHANNEL + 1,
            accepted: false,
            quiesced: false,
        };
        let shared = Arc::clone(&router.shared);
        std::thread::Builder::new()
            .name("thread-watch".to_string())
            .spawn(move || shared.watch_threads())
            .map_err(|e| format!("cannot start the thread watchdog: {e}"))?;
        router
            .start_worker(MAIN_CHANNEL, true)
            .map_err(|e| format!("cannot start the main channel: {e}"))?;
        Ok(router)
    }

    /// Serves one link until it ends (only a `Unix` link ends).
    pub fn serve_link(&mut self, mut link: File, kind: LinkKind) {
        match link.try_clone() {
            Ok(w) => *lock(&self.shared.writer) = Some(w),
            Err(e) => {
                log!("cannot duplicate the link: {e}");
                return;
            }
        }
        let chunk = if kind == LinkKind::Uart {
            UART_DATA_CHUNK
        } else {
            DATA_CHUNK
        };
        self.shared.chunk.store(chunk, Ordering::Relaxed);
        let mut reader = FrameReader::new();
        let mut reported_skip = 0;
        // Bytes read off the UART and not yet credited back to the host.
        let mut uncredited = 0usize;
        loop {
            let n = match reader.read_from(&mut link) {
                Ok(0) if kind == LinkKind::Unix => break,
                Ok(0) => {
                    std::thread::sleep(HOST_ABSENT_RETRY);
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if kind == LinkKind::Unix => {
                    log!("link read failed: {e}");
                    break;
                }
                Err(e) => {
                    log!("link read failed: {e}; retrying");
                    std::thread::sleep(HOST_ABSENT_RETRY);
                    continue;
                }
            };
            if kind == LinkKind::Uart {
                uncredited += n;
                // Credited as soon as read: the router hands requests to the
                // channels without blocking, so these bytes have left the tty's
                // buffers.
                if uncredited >= CREDIT_BATCH {
                    let bytes = u32::try_from(uncredited).unwrap_or(u32::MAX);
                    self.shared
                        .send(MAIN_CHANNEL, 0, &Message::Credit { bytes });
                    uncredited -= bytes as usize;
                }
            }
            loop {
                match reader.next_frame() {
                    Ok(None) => break,
                    // The host's window restarts with each handshake (it may have
                    // sent Hellos the tty discarded), and so does the count.
                    Ok(Some(frame)) if is_hello(&frame) => {
                        uncredited = 0;
                        self.route(frame);
                    }
                    Ok(Some(frame)) => self.route(frame),
                    Err(ProtoError::PayloadChecksum { channel, seq, .. }) => self.shared.refuse(
                        channel,
                        seq,
                        AgentError::InvalidRequest {
                            op: "receive".to_string(),
                            reason: "payload checksum mismatch".to_string(),
                        },
                    ),
                    Err(e) => log!("dropped a frame: {e}"),
                }
            }
            if reader.skipped() != reported_skip {
                log!(
                    "skipped {} bytes of stale input",
                    reader.skipped() - reported_skip
                );
                reported_skip = reader.skipped();
            }
        }
        *lock(&self.shared.writer) = None;
    }

    fn route(&mut self, frame: Frame) {
        let (channel, seq) = (frame.channel, frame.seq);
        let tag = frame.payload.first().copied().unwrap_or(0);
        if is_hello(&frame) {
            if let Ok(Message::Hello { version }) = frame.message() {
                self.hello(channel, seq, version);
            }
            return;
        }
        if self.quiesced {
            return;
        }
        let op = op_name_of_tag(tag);
        if !self.accepted {
            if op.is_some() {
                self.shared.refuse(channel, seq, AgentError::NoHandshake);
            }
            return;
        }
        let Some(op) = op else {
            // Data of an upload, a session's input: for the request in progress.
            if matches!(tag, TAG_DATA | TAG_INPUT | TAG_RESIZE) {
                return self.forward(channel, frame, None);
            }
            // Not for the agent (an answer, a credit) or not a message at all.
            if let Err(e) = frame.message() {
                self.shared.refuse(
                    channel,
                    seq,
                    AgentError::InvalidRequest {
                        op: "decode".to_string(),
                        reason: e.to_string(),
                    },
                );
            }
            return;
        };
        match op {
            // The requests the router performs itself: small, so decoded here.
            "quiesce" | "shutdown" | "spawn" | "worker_kill" => {}
            // A cancel reaches the busy channel without replacing the request it
            // performs (which is still the one a worker death would fail).
            "cancel" => return self.forward(channel, frame, None),
            _ => return self.forward(channel, frame, Some(op)),
        }
        let req = match frame.message() {
            Ok(Message::Request(req)) => req,
            Ok(_) => return,
            Err(e) => {
                return self.shared.refuse(
                    channel,
                    seq,
                    AgentError::InvalidRequest {
                        op: "decode".to_string(),
                        reason: e.to_string(),
                    },
                )
            }
        };
        let answer = match (&req, channel) {
            (Request::Quiesce, _) => {
                self.shared
                    .send(channel, seq, &Message::Response(Response::Quiesced));
                self.quiesced = true;
                return;
            }
            (Request::Shutdown, MAIN_CHANNEL) => return self.shutdown(seq),
            (Request::Spawn { thread }, MAIN_CHANNEL) => {
                let channel = self.next_channel;
                self.start_worker(channel, *thread).map(|pid| {
                    self.next_channel += 1;
                    Response::Spawned { channel, pid }
                })
            }
            (Request::WorkerKill { channel: target }, MAIN_CHANNEL) => self.kill_worker(*target),
            _ => Err(AgentError::Unsupported {
                op: req.op_name().to_string(),
                reason: format!("channel {channel} is a worker"),
            }),
        };
        let resp = answer.unwrap_or_else(Response::Error);
        self.shared.send(channel, seq, &Message::Response(resp));
    }

    fn hello(&mut self, channel: u32, seq: u32, version: u32) {
        self.accepted = version == PROTOCOL_VERSION;
        self.quiesced = false;
        if !self.accepted {
            log!("refusing host protocol version {version}; agent speaks {PROTOCOL_VERSION}");
        }
        self.shared.send(
            channel,
            seq,
            &Message::HelloAck {
                version: PROTOCOL_VERSION,
            },
        );
    }

    /// Hands a frame to the loop serving `channel`. A request (`op`) is the one the
    /// channel performs until it answers; only a request is refused when the channel
    /// does not exist or is gone (nothing answers data or a cancel).
    fn forward(&self, channel: u32, frame: Frame, op: Option<&'static str>) {
        let seq = frame.seq;
        let mut channels = lock(&self.shared.channels);
        let Some(ch) = channels.get_mut(&channel) else {
            drop(channels);
            if op.is_some() {
                self.shared
                    .refuse(channel, seq, AgentError::UnknownChannel { channel });
            }
            return;
        };
        if let (WorkerKind::Thread(tid), Some(_), None) = (ch.kind, op, &ch.gone) {
            if !thread_alive(tid) {
                drop(channels);
                self.shared.end_channel(channel, thread_ended(tid, None));
                return self.forward(channel, frame, op);
            }
        }
        if let Some(reason) = ch.gone.clone() {
            drop(channels);
            if op.is_some() {
                self.shared
                    .refuse(channel, seq, AgentError::WorkerGone { channel, reason });
            }
            return;
        }
        if let Some(op) = op {
            ch.pending = Some(Pending { seq, op });
            if let WorkerKind::Thread(_) = ch.kind {
                self.shared.thread_busy.notify_one();
            }
        }
        match &ch.route {
            Route::Mailbox(mailbox) => mailbox.push(frame),
            // The worker's inbound thread does the (possibly blocking) write, so a
            // busy worker never stalls the router.
            Route::Socket { to_worker, .. } => match encode_frame(channel, seq, &frame.payload) {
                Ok(bytes) => {
                    let _ = to_worker.send(bytes);
                }
                Err(e) => log!("cannot forward to channel {channel}: {e}"),
            },
        }
    }

    fn shutdown(&self, seq: u32) {
        if self.mode == Mode::Host {
            return self.shared.refuse(
                MAIN_CHANNEL,
                seq,
                AgentError::Unsupported {
                    op: "shutdown".to_string(),
                    reason: "the agent runs on the host (--serve-unix)".to_string(),
                },
            );
        }
        log!("powering off at the host's request");
        // A virtio-serial write returns once QEMU has taken the bytes, so the answer
        // is out before the power goes.
        self.shared
            .send(MAIN_CHANNEL, seq, &Message::Response(Response::Done));
        // SAFETY: neither call takes pointers; in a guest, powering off is the request.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
        log!("power-off failed: {}", std::io::Error::last_os_error());
    }

    fn kill_worker(&self, target: u32) -> Result<Response, AgentError> {
        if target == MAIN_CHANNEL {
            return Err(AgentError::InvalidRequest {
                op: "worker_kill".to_string(),
                reason: "the main channel is not a worker".to_string(),
            });
        }
        let mailbox = {
            let mut channels = lock(&self.shared.channels);
            let ch = channels
                .get_mut(&target)
                .ok_or(AgentError::UnknownChannel { channel: target })?;
            if ch.gone.is_some() {
                return Ok(Response::Done);
            }
            match (&ch.kind, &ch.route) {
                (WorkerKind::Process(pid), _) => {
                    ch.gone = Some("killed by the host".to_string());
                    // SAFETY: kill takes no pointers and touches no memory of ours.
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                    // Its relay reports the death and fails its request.
                    return Ok(Response::Done);
                }
                (WorkerKind::Thread(_), Route::Mailbox(mailbox)) => Arc::clone(mailbox),
                (WorkerKind::Thread(_), Route::Socket { .. }) => return Ok(Response::Done),
            }
        };
        // A thread cannot be killed alone: its loop ends after its current request
        // (a running command is killed), and nothing waits for that request any more.
        self.shared
            .end_channel(target, "killed by the host".to_string());
        mailbox.close();
        Ok(Response::Done)
    }

    /// Starts a worker serving `channel`; returns its pid (thread id for a thread).
    fn start_worker(&self, channel: u32, thread: bool) -> Result<i32, AgentError> {
        if thread {
            return self.start_thread(channel);
        }
        let (router_end, worker_end) = UnixStream::pair().map_err(|e| AgentError::Os {
            op: "socketpair".to_string(),
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let mode = self.mode;
        let chunk = self.shared.chunk.load(Ordering::Relaxed);
        // SAFETY: the router has other threads, so the child must not rely on any
        // lock another thread may hold at the fork. It touches no shared state of the
        // parent (no channel map, no link writer): it builds its own and allocates
        // through glibc's malloc, which glibc's fork leaves usable in the child. It
        // never returns from this block (`_exit`).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(sys::os_error("fork"));
        }
        if pid == 0 {
            sys::close_fds_except(&[worker_end.as_raw_fd(), log::fd()]);
            if let Ok(reading) = worker_end.try_clone() {
                let outbox = SocketOutbox {
                    sock: worker_end,
                    channel,
                    chunk,
                };
                serve::serve(&mut SocketInbox::new(reading), &outbox, mode);
            }
            // SAFETY: _exit skips the destructors of the parent's objects, whose
            // descriptors close_fds_except closed.
            unsafe { libc::_exit(0) };
        }
        drop(worker_end);
        self.attach_process(channel, router_end, pid)?;
        Ok(pid)
    }

    /// Starts a thread serving `channel` in this process, fed through a mailbox.
    fn start_thread(&self, channel: u32) -> Result<i32, AgentError> {
        let mailbox = Mailbox::new()?;
        let mut inbox = mailbox.inbox();
        let outbox = LinkOutbox {
            shared: Arc::clone(&self.shared),
            channel,
        };
        let mode = self.mode;
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("channel-{channel}"))
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() });
                serve::serve(&mut inbox, &outbox, mode);
            })
            .map_err(|e| AgentError::Os {
                op: "spawn worker thread".to_string(),
                errno: e.raw_os_error().unwrap_or(0),
            })?;
        let tid = tid_rx.recv().map_err(|_| AgentError::Os {
            op: "spawn worker thread".to_string(),
            errno: libc::ECHILD,
        })?;
        lock(&self.shared.channels).insert(
            channel,
            Channel {
                route: Route::Mailbox(mailbox),
                kind: WorkerKind::Thread(tid),
                gone: None,
                pending: None,
            },
        );
        Ok(tid)
    }

    fn attach_process(&self, channel: u32, socket: UnixStream, pid: i32) -> Result<(), AgentError> {
        let sock_err = |e: std::io::Error| AgentError::Os {
            op: format!("set up channel {channel}"),
            errno: e.raw_os_error().unwrap_or(0),
        };
        let mut inbound = socket.try_clone().map_err(sock_err)?;
        let outbound = socket;
        let (to_worker, requests) = mpsc::channel::<Vec<u8>>();
        lock(&self.shared.channels).insert(
            channel,
            Channel {
                route: Route::Socket { to_worker },
                kind: WorkerKind::Process(pid),
                gone: None,
                pending: None,
            },
        );
        std::thread::Builder::new()
            .name(format!("to-{channel}"))
            .spawn(move || {
                for frame in requests {
                    if inbound.write_all(&frame).is_err() {
                        return;
                    }
                }
            })
            .map_err(sock_err)?;
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name(format!("from-{channel}"))
            .spawn(move || relay_answers(channel, outbound, pid, &shared))
            .map_err(sock_err)?;
        Ok(())
    }
}

/// Decodes only small frames, so an 8 MiB write is not decoded twice.
fn is_hello(frame: &Frame) -> bool {
    frame.payload.len() <= 16 && matches!(frame.message(), Ok(Message::Hello { .. }))
}

/// Copies a process worker's answers to the link; when the worker ends, records why
/// and fails the request it was performing.
fn relay_answers(channel: u32, mut socket: UnixStream, pid: i32, shared: &Shared) {
    let mut reader = FrameReader::new();
    loop {
        match reader.read_from(&mut socket) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while let Ok(Some(frame)) = reader.next_frame() {
            // A `Data` or `Output` frame is part of an answer still to come.
            let partial = frame.payload.first().is_some_and(|t| is_partial_answer(*t));
            if !partial && !shared.answered(channel, frame.seq) {
                continue;
            }
            match encode_frame(frame.channel, frame.seq, &frame.payload) {
                Ok(bytes) => {
                    shared.send_frame(&bytes);
                }
                Err(e) => log!("cannot relay an answer from channel {channel}: {e}"),
            }
        }
    }
    let ended = match sys::wait_pid(pid) {
        Ok(status) => format!("worker process {pid} {}", sys::describe_status(status)),
        Err(errno) => format!("worker process {pid} ended (waitpid errno {errno})"),
    };
    shared.end_channel(channel, ended);
}
