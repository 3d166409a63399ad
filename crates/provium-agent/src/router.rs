//! The agent's side of the link: handshake, quiesce, and routing of frames by channel
//! to the main channel and to workers, each served over its own socket pair.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use provium_proto::{
    encode_frame, encode_message, AgentError, Frame, FrameReader, Message, ProtoError, Request,
    Response, MAIN_CHANNEL, PROTOCOL_VERSION,
};

use crate::log::{self, log};
use crate::serve::{self, Mode};
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

#[derive(Clone, Copy)]
enum WorkerKind {
    Process(i32),
    Thread(i32),
}

struct Channel {
    to_worker: Sender<Vec<u8>>,
    socket: UnixStream,
    kind: WorkerKind,
    /// Why the worker can no longer answer, once it cannot.
    gone: Option<String>,
    /// The sequence number of the request the worker is performing.
    pending: Option<u32>,
}

type Channels = Arc<Mutex<HashMap<u32, Channel>>>;
type LinkWriter = Arc<Mutex<Option<File>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn send(writer: &LinkWriter, channel: u32, seq: u32, msg: &Message) {
    let frame = match encode_message(channel, seq, msg) {
        Ok(f) => f,
        Err(e) => {
            log!("cannot encode answer on channel {channel}: {e}");
            return;
        }
    };
    send_frame(writer, &frame);
}

fn send_frame(writer: &LinkWriter, frame: &[u8]) {
    if let Some(w) = lock(writer).as_mut() {
        if let Err(e) = w.write_all(frame) {
            log!("link write failed: {e}");
        }
    }
}

pub struct Router {
    mode: Mode,
    writer: LinkWriter,
    channels: Channels,
    next_channel: u32,
    accepted: bool,
    quiesced: bool,
}

impl Router {
    /// A router with the main channel already being served.
    pub fn new(mode: Mode) -> Result<Router, String> {
        let router = Router {
            mode,
            writer: Arc::new(Mutex::new(None)),
            channels: Arc::new(Mutex::new(HashMap::new())),
            next_channel: MAIN_CHANNEL + 1,
            accepted: false,
            quiesced: false,
        };
        router
            .start_worker(MAIN_CHANNEL, true)
            .map_err(|e| format!("cannot start the main channel: {e}"))?;
        Ok(router)
    }

    /// Serves one link until it ends (only a `Unix` link ends).
    pub fn serve_link(&mut self, mut link: File, kind: LinkKind) {
        match link.try_clone() {
            Ok(w) => *lock(&self.writer) = Some(w),
            Err(e) => {
                log!("cannot duplicate the link: {e}");
                return;
            }
        }
        let mut reader = FrameReader::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut reported_skip = 0;
        // Bytes read off the UART and not yet credited back to the host.
        let mut uncredited = 0usize;
        loop {
            let n = match link.read(&mut buf) {
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
            reader.push(&buf[..n]);
            if kind == LinkKind::Uart {
                uncredited += n;
                // Credited as soon as read: the router hands requests to workers
                // without blocking, so these bytes have left the tty's buffers.
                if uncredited >= CREDIT_BATCH {
                    let bytes = u32::try_from(uncredited).unwrap_or(u32::MAX);
                    send(&self.writer, MAIN_CHANNEL, 0, &Message::Credit { bytes });
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
                    Err(ProtoError::PayloadChecksum { channel, seq }) => self.refuse(
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
        *lock(&self.writer) = None;
    }

    fn refuse(&self, channel: u32, seq: u32, err: AgentError) {
        send(
            &self.writer,
            channel,
            seq,
            &Message::Response(Response::Error(err)),
        );
    }

    fn route(&mut self, frame: Frame) {
        let (channel, seq) = (frame.channel, frame.seq);
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                if self.accepted && !self.quiesced {
                    self.refuse(
                        channel,
                        seq,
                        AgentError::InvalidRequest {
                            op: "decode".to_string(),
                            reason: e.to_string(),
                        },
                    );
                }
                return;
            }
        };
        let req = match msg {
            Message::Hello { version } => {
                self.accepted = version == PROTOCOL_VERSION;
                self.quiesced = false;
                if !self.accepted {
                    log!(
                        "refusing host protocol version {version}; agent speaks {PROTOCOL_VERSION}"
                    );
                }
                send(
                    &self.writer,
                    channel,
                    seq,
                    &Message::HelloAck {
                        version: PROTOCOL_VERSION,
                    },
                );
                return;
            }
            Message::Request(req) => req,
            Message::HelloAck { .. } | Message::Credit { .. } | Message::Response(_) => return,
        };
        if self.quiesced {
            return;
        }
        if !self.accepted {
            self.refuse(channel, seq, AgentError::NoHandshake);
            return;
        }
        let answer = match (&req, channel) {
            (Request::Quiesce, _) => {
                send(
                    &self.writer,
                    channel,
                    seq,
                    &Message::Response(Response::Quiesced),
                );
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
            (Request::Shutdown | Request::Spawn { .. } | Request::WorkerKill { .. }, _) => {
                Err(AgentError::Unsupported {
                    op: req.op_name().to_string(),
                    reason: format!("channel {channel} is a worker"),
                })
            }
            // A cancel reaches the busy worker without replacing the request it
            // performs (which is still the one a worker death would fail).
            (Request::Cancel { .. }, _) => {
                return self.forward(channel, seq, &frame.payload, false)
            }
            _ => return self.forward(channel, seq, &frame.payload, true),
        };
        let resp = answer.unwrap_or_else(Response::Error);
        send(&self.writer, channel, seq, &Message::Response(resp));
    }

    /// Hands a frame to the worker serving `channel`; a request (`pending`) is the one
    /// the worker performs until it answers.
    fn forward(&self, channel: u32, seq: u32, payload: &[u8], pending: bool) {
        let mut channels = lock(&self.channels);
        let Some(ch) = channels.get_mut(&channel) else {
            drop(channels);
            return self.refuse(channel, seq, AgentError::UnknownChannel { channel });
        };
        if let Some(reason) = ch.gone.clone() {
            drop(channels);
            return self.refuse(channel, seq, AgentError::WorkerGone { channel, reason });
        }
        let frame = match encode_frame(channel, seq, payload) {
            Ok(f) => f,
            Err(e) => {
                drop(channels);
                return log!("cannot forward to channel {channel}: {e}");
            }
        };
        if pending {
            ch.pending = Some(seq);
        }
        // The worker's inbound thread does the (possibly blocking) write, so a busy
        // worker never stalls the router.
        let _ = ch.to_worker.send(frame);
    }

    fn shutdown(&self, seq: u32) {
        if self.mode == Mode::Host {
            return self.refuse(
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
        send(
            &self.writer,
            MAIN_CHANNEL,
            seq,
            &Message::Response(Response::Done),
        );
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
        let mut channels = lock(&self.channels);
        let ch = channels
            .get_mut(&target)
            .ok_or(AgentError::UnknownChannel { channel: target })?;
        if ch.gone.is_none() {
            ch.gone = Some("killed by the host".to_string());
            match ch.kind {
                // SAFETY: kill takes no pointers and touches no memory of ours.
                WorkerKind::Process(pid) => unsafe {
                    libc::kill(pid, libc::SIGKILL);
                },
                // A thread cannot be killed alone; closing its socket ends its loop
                // after the current request.
                WorkerKind::Thread(_) => {
                    let _ = ch.socket.shutdown(Shutdown::Both);
                }
            }
        }
        Ok(Response::Done)
    }

    /// Starts a worker serving `channel`; returns its pid (thread id for a thread).
    fn start_worker(&self, channel: u32, thread: bool) -> Result<i32, AgentError> {
        let (router_end, worker_end) = UnixStream::pair().map_err(|e| AgentError::Os {
            op: "socketpair".to_string(),
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let mode = self.mode;
        let kind = if thread {
            let (tid_tx, tid_rx) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("channel-{channel}"))
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let _ = tid_tx.send(unsafe { libc::gettid() });
                    serve::serve(worker_end, mode);
                })
                .map_err(|e| AgentError::Os {
                    op: "spawn worker thread".to_string(),
                    errno: e.raw_os_error().unwrap_or(0),
                })?;
            WorkerKind::Thread(tid_rx.recv().map_err(|_| AgentError::Os {
                op: "spawn worker thread".to_string(),
                errno: libc::ECHILD,
            })?)
        } else {
            // SAFETY: the router has other threads, so the child must not rely on
            // any lock another thread may hold at the fork. It touches no shared
            // state of the parent (no channel map, no link writer): it builds its own
            // and allocates through glibc's malloc, which glibc's fork leaves usable
            // in the child. It never returns from this block (`_exit`).
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(sys::os_error("fork"));
            }
            if pid == 0 {
                sys::close_fds_except(&[worker_end.as_raw_fd(), log::fd()]);
                serve::serve(worker_end, mode);
                // SAFETY: _exit skips the destructors of the parent's objects, whose
                // descriptors close_fds_except closed.
                unsafe { libc::_exit(0) };
            }
            drop(worker_end);
            WorkerKind::Process(pid)
        };
        self.attach(channel, router_end, kind)?;
        Ok(match kind {
            WorkerKind::Process(pid) | WorkerKind::Thread(pid) => pid,
        })
    }

    fn attach(&self, channel: u32, socket: UnixStream, kind: WorkerKind) -> Result<(), AgentError> {
        let sock_err = |e: std::io::Error| AgentError::Os {
            op: format!("set up channel {channel}"),
            errno: e.raw_os_error().unwrap_or(0),
        };
        let mut inbound = socket.try_clone().map_err(sock_err)?;
        let outbound = socket.try_clone().map_err(sock_err)?;
        let (to_worker, requests) = mpsc::channel::<Vec<u8>>();
        lock(&self.channels).insert(
            channel,
            Channel {
                to_worker,
                socket,
                kind,
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
        let channels = Arc::clone(&self.channels);
        let writer = Arc::clone(&self.writer);
        std::thread::Builder::new()
            .name(format!("from-{channel}"))
            .spawn(move || relay_answers(channel, outbound, kind, &channels, &writer))
            .map_err(sock_err)?;
        Ok(())
    }
}

/// Decodes only small frames, so an 8 MiB write is not decoded twice.
fn is_hello(frame: &Frame) -> bool {
    frame.payload.len() <= 16 && matches!(frame.message(), Ok(Message::Hello { .. }))
}

/// Copies a worker's answers to the link; when the worker ends, records why and
/// fails the request it was performing.
fn relay_answers(
    channel: u32,
    mut socket: UnixStream,
    kind: WorkerKind,
    channels: &Channels,
    writer: &LinkWriter,
) {
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match socket.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        reader.push(&buf[..n]);
        while let Ok(Some(frame)) = reader.next_frame() {
            {
                let mut chans = lock(channels);
                if let Some(ch) = chans.get_mut(&channel) {
                    if ch.pending == Some(frame.seq) {
                        ch.pending = None;
                    }
                }
            }
            match encode_frame(frame.channel, frame.seq, &frame.payload) {
                Ok(bytes) => send_frame(writer, &bytes),
                Err(e) => log!("cannot relay an answer from channel {channel}: {e}"),
            }
        }
    }
    let ended = match kind {
        WorkerKind::Process(pid) => match sys::wait_pid(pid) {
            Ok(status) => format!("worker process {pid} {}", sys::describe_status(status)),
            Err(errno) => format!("worker process {pid} ended (waitpid errno {errno})"),
        },
        WorkerKind::Thread(tid) => format!("worker thread {tid} ended"),
    };
    let (reason, pending) = {
        let mut chans = lock(channels);
        let Some(ch) = chans.get_mut(&channel) else {
            return;
        };
        let reason = ch.gone.get_or_insert(ended).clone();
        (reason, ch.pending.take())
    };
    log!("channel {channel}: {reason}");
    if let Some(seq) = pending {
        send(
            writer,
            channel,
            seq,
            &Message::Response(Response::Error(AgentError::WorkerGone { channel, reason })),
        );
    }
}
