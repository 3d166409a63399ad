//! Host side of the agent channel: handshake, framed requests, channels, resync.
//!
//! One `Link` per VM, shared (it is `Clone`) by the VM handle, its workers and its
//! jobs. A reader thread routes each response to the call waiting on its channel and
//! sequence number; a late answer to an abandoned call is dropped. Every wait has a
//! deadline and polls the caller's liveness check, so a dead QEMU or a kernel panic
//! ends it at once.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use provium_proto::{
    encode_message, encode_request, is_partial_answer, seal_data_frame, AgentError, Frame,
    FrameReader, Message, ProtoError, Request, Response, DATA_CHUNK, DATA_FRAME_PREFIX, MAX_DATA,
    PROTOCOL_VERSION, UART_DATA_CHUNK,
};

use crate::cancel::{self, Stop};

/// Answers `Some(reason)` once the VM can no longer answer (QEMU exited, the console
/// shows a kernel panic); called often, so it must be cheap.
pub type Liveness = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How often a wait wakes up to ask the liveness check.
const LIVENESS_POLL: Duration = Duration::from_millis(50);
/// How often the handshake repeats `Hello` while the guest is not yet listening.
const HELLO_INTERVAL: Duration = Duration::from_millis(250);
/// How long telling the agent about an abandoned request may take.
const CANCEL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// On the ttyS1 fallback, how many bytes the host may have sent that the agent has
/// not yet credited back. QEMU's 8250 has no flow control on a socket chardev and
/// the guest tty drops input past its 64 KiB of flip buffers, so the window stays
/// well below that. The agent credits every 4 KiB it reads (`CREDIT_BATCH`).
pub const UART_WINDOW: u64 = 16 * 1024;

/// The agent's credit batch (`CREDIT_BATCH` in its router): a window below it would
/// wait for a credit that never comes.
const AGENT_CREDIT_BATCH: u64 = 4 * 1024;

/// The window in use: [`UART_WINDOW`], or `PROVIUM_UART_WINDOW` (bytes, at least the
/// agent's 4 KiB credit batch) for measuring other sizes (docs/benchmarks.md, "UART
/// flow control, measured").
fn uart_window() -> u64 {
    static WINDOW: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *WINDOW.get_or_init(|| window_from(std::env::var("PROVIUM_UART_WINDOW").ok().as_deref()))
}

/// The window a `PROVIUM_UART_WINDOW` value asks for; the default when it is unset or
/// no number, never below the agent's credit batch.
fn window_from(value: Option<&str>) -> u64 {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(UART_WINDOW, |w| w.max(AGENT_CREDIT_BATCH))
}

/// A failed exchange with the agent; every variant names the VM and the operation.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("VM {vm}: agent did not answer the handshake within {waited:?}")]
    HandshakeTimeout { vm: String, waited: Duration },
    #[error("VM {vm}: protocol version mismatch: host speaks {host}, agent speaks {agent}")]
    VersionMismatch { vm: String, host: u32, agent: u32 },
    #[error("VM {vm}: {op} on channel {channel}: no answer within {waited:?}")]
    Timeout {
        vm: String,
        op: &'static str,
        channel: u32,
        waited: Duration,
    },
    #[error("VM {vm}: {op} on channel {channel} abandoned: {reason}")]
    VmDead {
        vm: String,
        op: &'static str,
        channel: u32,
        reason: String,
    },
    #[error("VM {vm}: {op} on channel {channel}: agent connection lost: {reason}")]
    Disconnected {
        vm: String,
        op: &'static str,
        channel: u32,
        reason: String,
    },
    #[error("VM {vm}: {op} on channel {channel}: {source}")]
    Agent {
        vm: String,
        op: &'static str,
        channel: u32,
        #[source]
        source: AgentError,
    },
    #[error("VM {vm}: {op} on channel {channel}: {source}")]
    Protocol {
        vm: String,
        op: &'static str,
        channel: u32,
        #[source]
        source: ProtoError,
    },
    #[error("VM {vm}: {op} on channel {channel}: unexpected answer {got}")]
    Unexpected {
        vm: String,
        op: &'static str,
        channel: u32,
        got: String,
    },
    /// The file waiting for the answer had to stop (a timeout, an interrupt).
    #[error("VM {vm}: {op} on channel {channel}: {stop}")]
    Cancelled {
        vm: String,
        op: &'static str,
        channel: u32,
        stop: Stop,
    },
    #[error("VM {vm}: {op}: agent socket: {source}")]
    Io {
        vm: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl LinkError {
    /// The agent's own error, when the agent answered with one.
    pub fn agent_error(&self) -> Option<&AgentError> {
        match self {
            LinkError::Agent { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The VM stopped being able to answer (as opposed to a failed operation).
    pub fn is_vm_failure(&self) -> bool {
        !matches!(
            self,
            LinkError::Agent { .. }
                | LinkError::Unexpected { .. }
                | LinkError::Protocol { .. }
                | LinkError::Cancelled { .. }
        )
    }
}

/// What the reader hands a waiting call: a piece of its data (a `Data` frame, kept
/// whole so its bytes are copied once, into the result), or the message that ends it.
enum Delivery {
    Data(Frame),
    End(Result<Message, ProtoError>),
}

/// A delivery after its checks: the piece's bytes, or the ending message.
enum Delivered {
    Data(Frame),
    End(Message),
}

struct Pending {
    seq: u32,
    tx: Sender<Delivery>,
}

#[derive(Default)]
struct State {
    /// Bumped on every new connection so an old reader cannot touch new state.
    generation: u64,
    /// Why the current connection ended, once it has.
    lost: Option<String>,
    pending: HashMap<u32, Pending>,
    /// Channels an open [`LinkStream`] holds: no call may start on them meanwhile.
    streams: HashSet<u32>,
    hello: Option<Sender<u32>>,
    /// Bytes the host may still send before the agent's next `Credit`; `None` when
    /// the channel has its own backpressure (virtio-serial) and writes are unpaced.
    credit: Option<u64>,
}

struct Inner {
    vm: String,
    liveness: Liveness,
    writer: Mutex<UnixStream>,
    state: Arc<Mutex<State>>,
    /// Signalled when a `Credit` arrives or the connection is lost.
    credit_changed: Arc<Condvar>,
    next_seq: AtomicU32,
    channel_locks: Mutex<HashMap<u32, Arc<Mutex<()>>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wakes the reader thread so it exits.
        let _ = lock(&self.writer).shutdown(Shutdown::Both);
    }
}

/// The connection to one VM's agent.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One exchange on the link: what errors name (the operation, the channel) and how
/// long it may take (its deadline, and the timeout it came from).
#[derive(Debug, Clone, Copy)]
struct Exchange {
    op: &'static str,
    channel: u32,
    deadline: Instant,
    timeout: Duration,
}

impl Exchange {
    fn new(op: &'static str, channel: u32, timeout: Duration) -> Exchange {
        Exchange {
            op,
            channel,
            deadline: Instant::now() + timeout,
            timeout,
        }
    }
}

impl Link {
    /// Performs the handshake on a connected stream: repeats `Hello` until the agent
    /// answers, the deadline passes or `liveness` reports the VM dead.
    pub fn connect(
        vm: &str,
        stream: UnixStream,
        liveness: Liveness,
        handshake_timeout: Duration,
    ) -> Result<Link, LinkError> {
        let writer = stream.try_clone().map_err(|source| LinkError::Io {
            vm: vm.to_string(),
            op: "handshake",
            source,
        })?;
        let link = Link {
            inner: Arc::new(Inner {
                vm: vm.to_string(),
                liveness,
                writer: Mutex::new(writer),
                state: Arc::new(Mutex::new(State::default())),
                credit_changed: Arc::new(Condvar::new()),
                next_seq: AtomicU32::new(1),
                channel_locks: Mutex::new(HashMap::new()),
            }),
        };
        link.start_reader(stream, 0)?;
        link.hello(handshake_timeout)?;
        Ok(link)
    }

    /// Replaces the connection (after a snapshot restore, QEMU is a new process with a
    /// new socket) and handshakes again. Calls in flight on the old connection fail.
    pub fn resync_and_hello(
        &self,
        stream: UnixStream,
        handshake_timeout: Duration,
    ) -> Result<(), LinkError> {
        let writer = stream
            .try_clone()
            .map_err(|source| self.io("resync", source))?;
        let generation = {
            let mut state = lock(&self.inner.state);
            state.generation += 1;
            state.lost = None;
            state.pending.clear();
            state.hello = None;
            state.generation
        };
        // A paced write waiting for credit on the old connection gives up now.
        self.inner.credit_changed.notify_all();
        {
            let mut w = lock(&self.inner.writer);
            let _ = w.shutdown(Shutdown::Both);
            *w = writer;
        }
        self.start_reader(stream, generation)?;
        self.hello(handshake_timeout)
    }

    /// Paces every later request with the agent's credits (the ttyS1 fallback, where
    /// nothing else stops the host from overrunning the guest tty). The window
    /// restarts at [`UART_WINDOW`] with each handshake.
    pub fn pace_for_uart(&self) {
        lock(&self.inner.state).credit = Some(uart_window());
    }

    /// The VM name errors carry.
    pub fn vm(&self) -> &str {
        &self.inner.vm
    }

    /// Sends `req` on `channel` and waits up to `timeout` for its answer. An agent
    /// `Error` response becomes `LinkError::Agent`. Calls on one channel are
    /// serialised; calls on different channels proceed concurrently.
    pub fn call(
        &self,
        channel: u32,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, LinkError> {
        let (response, data) = self.call_with_data(channel, req, &[], timeout)?;
        if !data.is_empty() {
            return Err(LinkError::Unexpected {
                vm: self.inner.vm.clone(),
                op: req.op_name(),
                channel,
                got: format!("{} bytes of data before the answer", data.len()),
            });
        }
        Ok(response)
    }

    /// As [`Link::call`], for the requests whose data moves in `Data` frames: sends
    /// `upload` after the request, in chunks, without waiting for anything between
    /// them (an early answer, such as a failed open, stops the upload), and returns
    /// the answer with the data the agent sent before it (at most [`MAX_DATA`]).
    pub fn call_with_data(
        &self,
        channel: u32,
        req: &Request,
        upload: &[u8],
        timeout: Duration,
    ) -> Result<(Response, Vec<u8>), LinkError> {
        let x = Exchange::new(req.op_name(), channel, timeout);
        let channel_lock = self.channel_lock(channel);
        let _serialised = lock(&channel_lock);
        let Begun {
            seq,
            frame,
            rx,
            paced,
        } = self.begin(&x, req, false)?;
        let result = self
            .write_frame(&frame, &x, true)
            .and_then(|()| self.upload(upload, seq, paced, &rx, &x))
            .and_then(|early| self.collect(early, &rx, &x));
        {
            let mut state = lock(&self.inner.state);
            if state.pending.get(&channel).is_some_and(|p| p.seq == seq) {
                state.pending.remove(&channel);
            }
        }
        if matches!(
            result,
            Err(LinkError::Timeout { .. } | LinkError::Cancelled { .. })
        ) {
            self.cancel_in_guest(channel, seq);
        }
        let (message, data) = result?;
        match message {
            Message::Response(Response::Error(source)) => Err(LinkError::Agent {
                vm: self.inner.vm.clone(),
                op: x.op,
                channel,
                source,
            }),
            Message::Response(resp) => Ok((resp, data)),
            other => Err(self.unexpected(x.op, channel, &other)),
        }
    }

    /// Sends `data` as `Data` frames of request `seq`, each built in one reused
    /// buffer; stops early when the agent has already answered, and returns what it
    /// answered.
    fn upload(
        &self,
        data: &[u8],
        seq: u32,
        paced: bool,
        rx: &Receiver<Delivery>,
        x: &Exchange,
    ) -> Result<Option<Delivery>, LinkError> {
        // Smaller pieces on the UART, so other channels' frames pass between them.
        let chunk = if paced { UART_DATA_CHUNK } else { DATA_CHUNK };
        let mut frame = Vec::with_capacity(DATA_FRAME_PREFIX + chunk.min(data.len()));
        for piece in data.chunks(chunk) {
            if let Ok(early) = rx.try_recv() {
                return Ok(Some(early));
            }
            self.check_alive(x)?;
            if Instant::now() >= x.deadline {
                return Err(self.timeout(x));
            }
            frame.clear();
            frame.resize(DATA_FRAME_PREFIX, 0);
            frame.extend_from_slice(piece);
            seal_data_frame(&mut frame, x.channel, seq).map_err(|e| self.protocol(x, e))?;
            self.write_frame(&frame, x, true)?;
        }
        Ok(None)
    }

    /// Waits for the message that ends the call, gathering the data sent before it.
    fn collect(
        &self,
        early: Option<Delivery>,
        rx: &Receiver<Delivery>,
        x: &Exchange,
    ) -> Result<(Message, Vec<u8>), LinkError> {
        let mut data = Vec::new();
        let mut next = early;
        loop {
            let delivered = match next.take() {
                Some(delivery) => delivery
                    .into_result()
                    .map_err(|source| self.protocol(x, source))?,
                None => self.wait(rx, x)?,
            };
            let frame = match delivered {
                Delivered::End(message) => return Ok((message, data)),
                Delivered::Data(frame) => frame,
            };
            let bytes = frame
                .data()
                .map_err(|source| self.protocol(x, source))?
                .unwrap_or_default();
            if data.len() + bytes.len() > MAX_DATA as usize {
                return Err(self.protocol(
                    x,
                    ProtoError::Oversize {
                        what: "data before the answer",
                        len: (data.len() + bytes.len()) as u64,
                        cap: u64::from(MAX_DATA),
                    },
                ));
            }
            data.extend_from_slice(bytes);
        }
    }

    /// Sends `req` on `channel` and returns the exchange that follows, for requests
    /// answered over time (`Session`): the caller sends messages of its own with the
    /// request's sequence number and takes the agent's as they come, until the
    /// answer. The channel takes no other call meanwhile. Dropping the stream before
    /// the answer cancels the request in the guest. `write_timeout` bounds each
    /// write (the request's, and each later message's).
    pub fn open_stream(
        &self,
        channel: u32,
        req: &Request,
        write_timeout: Duration,
    ) -> Result<LinkStream, LinkError> {
        let x = Exchange::new(req.op_name(), channel, write_timeout);
        let channel_lock = self.channel_lock(channel);
        let _serialised = lock(&channel_lock);
        let Begun { seq, frame, rx, .. } = self.begin(&x, req, true)?;
        let stream = LinkStream {
            link: self.clone(),
            op: x.op,
            channel,
            seq,
            write_timeout,
            rx,
            ended: false,
        };
        self.write_frame(&frame, &x, true)?;
        Ok(stream)
    }

    /// The lock that serialises calls on `channel`.
    fn channel_lock(&self, channel: u32) -> Arc<Mutex<()>> {
        let mut locks = lock(&self.inner.channel_locks);
        Arc::clone(locks.entry(channel).or_default())
    }

    /// Starts exchange `x` for `req` (its channel lock held): checks that the caller
    /// may go on and the connection stands, encodes the request under a new sequence
    /// number and registers it as the channel's pending call; with `hold`, the channel
    /// is also held for a stream until it is dropped. Refused while a stream holds it.
    fn begin(&self, x: &Exchange, req: &Request, hold: bool) -> Result<Begun, LinkError> {
        // A file that must stop sends nothing more.
        self.check_alive(x)?;
        let channel = x.channel;
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let frame = encode_request(channel, seq, req).map_err(|source| self.protocol(x, source))?;
        let (tx, rx) = mpsc::channel();
        let mut state = lock(&self.inner.state);
        if let Some(reason) = &state.lost {
            return Err(LinkError::Disconnected {
                vm: self.inner.vm.clone(),
                op: x.op,
                channel,
                reason: reason.clone(),
            });
        }
        if state.streams.contains(&channel) {
            return Err(LinkError::Unexpected {
                vm: self.inner.vm.clone(),
                op: x.op,
                channel,
                got: "the channel is held by an interactive session".to_string(),
            });
        }
        if hold {
            state.streams.insert(channel);
        }
        state.pending.insert(channel, Pending { seq, tx });
        Ok(Begun {
            seq,
            frame,
            rx,
            paced: state.credit.is_some(),
        })
    }

    /// Tells the agent the host gave up on request `seq`, so a command it runs is
    /// killed and the channel is free for the next call. Best effort, briefly: the
    /// caller is already on its way out.
    fn cancel_in_guest(&self, channel: u32, seq: u32) {
        let Ok(frame) = encode_message(channel, 0, &Message::Request(Request::Cancel { seq }))
        else {
            return;
        };
        let x = Exchange::new("cancel", channel, CANCEL_WRITE_TIMEOUT);
        // Not through `check_alive`'s stop check: the cancel must go out even though
        // this thread's file is stopping.
        let _ = self.write_frame_unchecked(&frame, &x, true);
    }

    /// Asks the agent to stop reading until the next `Hello` (before a snapshot).
    pub fn quiesce(&self, timeout: Duration) -> Result<(), LinkError> {
        match self.call(provium_proto::MAIN_CHANNEL, &Request::Quiesce, timeout)? {
            Response::Quiesced => Ok(()),
            other => Err(self.unexpected("quiesce", 0, &Message::Response(other))),
        }
    }

    fn unexpected(&self, op: &'static str, channel: u32, got: &Message) -> LinkError {
        LinkError::Unexpected {
            vm: self.inner.vm.clone(),
            op,
            channel,
            got: format!("{got:?}").chars().take(200).collect(),
        }
    }

    fn io(&self, op: &'static str, source: io::Error) -> LinkError {
        LinkError::Io {
            vm: self.inner.vm.clone(),
            op,
            source,
        }
    }

    fn start_reader(&self, stream: UnixStream, generation: u64) -> Result<(), LinkError> {
        let state = Arc::clone(&self.inner.state);
        let credit_changed = Arc::clone(&self.inner.credit_changed);
        std::thread::Builder::new()
            .name(format!("link-{}", self.inner.vm))
            .spawn(move || read_loop(stream, state, &credit_changed, generation))
            .map(|_| ())
            .map_err(|source| self.io("start reader", source))
    }

    fn hello(&self, handshake_timeout: Duration) -> Result<(), LinkError> {
        let start = Instant::now();
        let handshake = Exchange::new("handshake", 0, handshake_timeout);
        let deadline = handshake.deadline;
        let (tx, rx) = mpsc::channel();
        lock(&self.inner.state).hello = Some(tx);
        let result = loop {
            let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
            let frame = encode_message(
                provium_proto::MAIN_CHANNEL,
                seq,
                &Message::Hello {
                    version: PROTOCOL_VERSION,
                },
            )
            .map_err(|source| self.protocol(&handshake, source))?;
            // Unpaced: Hellos sent before the agent opened the tty are never credited,
            // and the window restarts when the answer arrives.
            if let Err(e) = self.write_frame(&frame, &handshake, false) {
                break Err(e);
            }
            let resend = Exchange {
                deadline: (Instant::now() + HELLO_INTERVAL).min(deadline),
                ..handshake
            };
            match self.wait(&rx, &resend) {
                Ok(agent) if agent == PROTOCOL_VERSION => break Ok(()),
                Ok(agent) => {
                    break Err(LinkError::VersionMismatch {
                        vm: self.inner.vm.clone(),
                        host: PROTOCOL_VERSION,
                        agent,
                    })
                }
                Err(LinkError::Timeout { .. }) if Instant::now() < deadline => continue,
                Err(LinkError::Timeout { .. }) => {
                    break Err(LinkError::HandshakeTimeout {
                        vm: self.inner.vm.clone(),
                        waited: start.elapsed(),
                    })
                }
                Err(e) => break Err(e),
            }
        };
        lock(&self.inner.state).hello = None;
        result
    }

    /// Waits for one delivery on `rx` until the exchange's deadline, checking liveness
    /// (and whether the waiting file must stop) meanwhile.
    fn wait<T>(&self, rx: &Receiver<T>, x: &Exchange) -> Result<T::Value, LinkError>
    where
        T: DeliveryResult,
    {
        loop {
            let now = Instant::now();
            if now >= x.deadline {
                return Err(self.timeout(x));
            }
            match rx.recv_timeout((x.deadline - now).min(LIVENESS_POLL)) {
                Ok(v) => return v.into_result().map_err(|source| self.protocol(x, source)),
                Err(RecvTimeoutError::Timeout) => self.check_alive(x)?,
                Err(RecvTimeoutError::Disconnected) => {
                    // The VM's own account (QEMU exit, panic) is better evidence than
                    // the socket's.
                    self.check_alive(x)?;
                    let reason = lock(&self.inner.state)
                        .lost
                        .clone()
                        .unwrap_or_else(|| "the connection was replaced".to_string());
                    return Err(LinkError::Disconnected {
                        vm: self.inner.vm.clone(),
                        op: x.op,
                        channel: x.channel,
                        reason,
                    });
                }
            }
        }
    }

    /// The error for a wait that reached its deadline.
    fn timeout(&self, x: &Exchange) -> LinkError {
        LinkError::Timeout {
            vm: self.inner.vm.clone(),
            op: x.op,
            channel: x.channel,
            waited: x.timeout,
        }
    }

    fn protocol(&self, x: &Exchange, source: ProtoError) -> LinkError {
        LinkError::Protocol {
            vm: self.inner.vm.clone(),
            op: x.op,
            channel: x.channel,
            source,
        }
    }

    /// Fails when the VM can no longer answer, or the waiting file must stop.
    fn check_alive(&self, x: &Exchange) -> Result<(), LinkError> {
        self.check_vm(x)?;
        cancel::checkpoint().map_err(|stop| LinkError::Cancelled {
            vm: self.inner.vm.clone(),
            op: x.op,
            channel: x.channel,
            stop,
        })
    }

    /// Fails when the VM can no longer answer.
    fn check_vm(&self, x: &Exchange) -> Result<(), LinkError> {
        match (self.inner.liveness)() {
            Some(reason) => Err(LinkError::VmDead {
                vm: self.inner.vm.clone(),
                op: x.op,
                channel: x.channel,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Takes up to `want` bytes of credit, waiting for the agent's `Credit` while
    /// there is none; unpaced links get `want` at once. `generation` is the
    /// connection the frame is being written to: credit from a newer one is not its.
    fn take_credit(
        &self,
        want: usize,
        generation: u64,
        x: &Exchange,
        check: &dyn Fn(&Exchange) -> Result<(), LinkError>,
    ) -> Result<usize, LinkError> {
        let mut state = lock(&self.inner.state);
        loop {
            match state.credit {
                None => return Ok(want),
                Some(0) => {}
                Some(avail) => {
                    let n = want.min(usize::try_from(avail).unwrap_or(usize::MAX));
                    state.credit = Some(avail - n as u64);
                    return Ok(n);
                }
            }
            let lost = if state.generation != generation {
                Some("the connection was replaced".to_string())
            } else {
                state.lost.clone()
            };
            if let Some(reason) = lost {
                drop(state);
                // The VM's own account (QEMU exit, panic) is better evidence.
                check(x)?;
                return Err(LinkError::Disconnected {
                    vm: self.inner.vm.clone(),
                    op: x.op,
                    channel: x.channel,
                    reason,
                });
            }
            let now = Instant::now();
            if now >= x.deadline {
                return Err(self.timeout(x));
            }
            let (guard, _) = self
                .inner
                .credit_changed
                .wait_timeout(state, (x.deadline - now).min(LIVENESS_POLL))
                .unwrap_or_else(|e| e.into_inner());
            drop(guard);
            check(x)?;
            state = lock(&self.inner.state);
        }
    }

    /// Returns credit taken for bytes that were never written.
    fn give_back_credit(&self, bytes: usize) {
        if let Some(avail) = lock(&self.inner.state).credit.as_mut() {
            *avail += bytes as u64;
        }
    }

    /// Writes a whole frame in slices so a guest that stops reading cannot block the
    /// caller past its deadline. A `paced` write on the UART sends no more than the
    /// agent has credited.
    fn write_frame(&self, frame: &[u8], x: &Exchange, paced: bool) -> Result<(), LinkError> {
        self.write_checked(frame, x, paced, &|x| self.check_alive(x))
    }

    /// As [`Link::write_frame`], but not stopped by the waiting file's own stop (a
    /// cancel is sent precisely while the file stops).
    fn write_frame_unchecked(
        &self,
        frame: &[u8],
        x: &Exchange,
        paced: bool,
    ) -> Result<(), LinkError> {
        self.write_checked(frame, x, paced, &|x| self.check_vm(x))
    }

    fn write_checked(
        &self,
        frame: &[u8],
        x: &Exchange,
        paced: bool,
        check: &dyn Fn(&Exchange) -> Result<(), LinkError>,
    ) -> Result<(), LinkError> {
        let mut w = lock(&self.inner.writer);
        w.set_write_timeout(Some(LIVENESS_POLL))
            .map_err(|source| self.io(x.op, source))?;
        let generation = lock(&self.inner.state).generation;
        let mut written = 0;
        let mut allowed = if paced { 0 } else { frame.len() };
        let mut result = Ok(());
        while written < frame.len() {
            if written == allowed {
                match self.take_credit(frame.len() - written, generation, x, check) {
                    Ok(n) => allowed += n,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            match w.write(&frame[written..allowed]) {
                Ok(0) => {
                    result = Err(LinkError::Disconnected {
                        vm: self.inner.vm.clone(),
                        op: x.op,
                        channel: x.channel,
                        reason: "the agent socket accepts no more data".to_string(),
                    });
                    break;
                }
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if let Err(e) = check(x) {
                        result = Err(e);
                        break;
                    }
                    if Instant::now() >= x.deadline {
                        result = Err(self.timeout(x));
                        break;
                    }
                }
                Err(e) => {
                    result = check(x).and(Err(LinkError::Disconnected {
                        vm: self.inner.vm.clone(),
                        op: x.op,
                        channel: x.channel,
                        reason: format!("write failed: {e}"),
                    }));
                    break;
                }
            }
        }
        if paced && result.is_err() {
            self.give_back_credit(allowed - written);
        }
        result
    }
}

/// A request registered by [`Link::begin`], ready to be written.
struct Begun {
    seq: u32,
    frame: Vec<u8>,
    rx: Receiver<Delivery>,
    /// Writes wait for the agent's credit (the UART).
    paced: bool,
}

/// An exchange opened by [`Link::open_stream`].
pub struct LinkStream {
    link: Link,
    op: &'static str,
    channel: u32,
    seq: u32,
    write_timeout: Duration,
    rx: Receiver<Delivery>,
    /// The answer arrived (or the stream failed for good).
    ended: bool,
}

impl LinkStream {
    /// Sends `message` with the request's channel and sequence number (paced on the
    /// UART like any request).
    pub fn send(&self, message: &Message) -> Result<(), LinkError> {
        let x = Exchange::new(self.op, self.channel, self.write_timeout);
        let frame = encode_message(self.channel, self.seq, message)
            .map_err(|source| self.link.protocol(&x, source))?;
        self.link.write_frame(&frame, &x, true)
    }

    /// The agent's next message of this exchange, waiting up to `wait`: a piece
    /// (`Output`, `Data`) or the answer, after which the stream has ended. `None`
    /// when nothing came within `wait`. Liveness and the caller's stop are checked
    /// while waiting, as in any call.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Message>, LinkError> {
        if self.ended {
            return Ok(None);
        }
        let x = Exchange::new(self.op, self.channel, wait);
        loop {
            let left = x.deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(LIVENESS_POLL)) {
                Ok(Delivery::Data(frame)) => {
                    return frame
                        .message()
                        .map(Some)
                        .map_err(|source| self.link.protocol(&x, source))
                }
                Ok(Delivery::End(message)) => {
                    self.ended = true;
                    let message = message.map_err(|source| self.link.protocol(&x, source))?;
                    return match message {
                        Message::Response(Response::Error(source)) => Err(LinkError::Agent {
                            vm: self.link.inner.vm.clone(),
                            op: x.op,
                            channel: x.channel,
                            source,
                        }),
                        other => Ok(Some(other)),
                    };
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.link.check_alive(&x)?;
                    if left.is_zero() {
                        return Ok(None);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.ended = true;
                    // As in `Link::wait`: the VM's own account first.
                    return Err(self.link.wait::<Delivery>(&self.rx, &x).err().unwrap_or(
                        LinkError::Disconnected {
                            vm: self.link.inner.vm.clone(),
                            op: x.op,
                            channel: x.channel,
                            reason: "the connection was replaced".to_string(),
                        },
                    ));
                }
            }
        }
    }
}

impl Drop for LinkStream {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.link.inner.state);
            state.streams.remove(&self.channel);
            if state
                .pending
                .get(&self.channel)
                .is_some_and(|p| p.seq == self.seq)
            {
                state.pending.remove(&self.channel);
            }
        }
        if !self.ended {
            self.link.cancel_in_guest(self.channel, self.seq);
        }
    }
}

/// What a waiter receives: a routed message or the handshake's agent version.
trait DeliveryResult {
    type Value;
    fn into_result(self) -> Result<Self::Value, ProtoError>;
}

impl DeliveryResult for Delivery {
    type Value = Delivered;
    fn into_result(self) -> Result<Delivered, ProtoError> {
        match self {
            Delivery::Data(frame) => Ok(Delivered::Data(frame)),
            Delivery::End(message) => message.map(Delivered::End),
        }
    }
}

impl DeliveryResult for u32 {
    type Value = u32;
    fn into_result(self) -> Result<u32, ProtoError> {
        Ok(self)
    }
}

fn read_loop(
    mut stream: UnixStream,
    state: Arc<Mutex<State>>,
    credit_changed: &Condvar,
    generation: u64,
) {
    let mut reader = FrameReader::new();
    let reason = loop {
        match reader.read_from(&mut stream) {
            Ok(0) => break "the agent socket was closed".to_string(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break format!("read failed: {e}"),
        };
        loop {
            let (channel, seq, delivery) = match reader.next_frame() {
                Ok(None) => break,
                Ok(Some(frame)) if frame.payload.first().is_some_and(|t| is_partial_answer(*t)) => {
                    (frame.channel, frame.seq, Delivery::Data(frame))
                }
                Ok(Some(frame)) => (frame.channel, frame.seq, Delivery::End(frame.message())),
                Err(ProtoError::PayloadChecksum { older: true, .. })
                    if lock(&state).hello.is_some() =>
                {
                    // An agent of protocol 4 or older refusing our Hello: its frames
                    // carry the old payload checksum. Said as a version mismatch.
                    if let Some(tx) = &lock(&state).hello {
                        let _ = tx.send(provium_proto::LAST_FNV_PROTOCOL);
                    }
                    continue;
                }
                Err(e @ ProtoError::PayloadChecksum { channel, seq, .. }) => {
                    (channel, seq, Delivery::End(Err(e)))
                }
                // An oversize header cannot be attributed to a call; the reader has
                // skipped it and resynchronises on the next frame.
                Err(_) => continue,
            };
            let mut st = lock(&state);
            if st.generation != generation {
                return;
            }
            if let Delivery::End(Ok(Message::HelloAck { version })) = delivery {
                // The agent restarts its count at each Hello, so the window restarts;
                // only during a handshake, before any paced byte, since a late answer
                // to an earlier Hello would otherwise refill a window in use.
                if st.hello.is_some() && st.credit.is_some() {
                    st.credit = Some(uart_window());
                    credit_changed.notify_all();
                }
                if let Some(tx) = &st.hello {
                    let _ = tx.send(version);
                }
                continue;
            }
            if let Delivery::End(Ok(Message::Credit { bytes })) = delivery {
                if let Some(avail) = st.credit.as_mut() {
                    *avail += u64::from(bytes);
                    credit_changed.notify_all();
                }
                continue;
            }
            match st.pending.get(&channel) {
                Some(p) if p.seq == seq => {
                    if let Delivery::Data(_) = delivery {
                        // More is to come: the call stays pending.
                        let _ = p.tx.send(delivery);
                    } else if let Some(p) = st.pending.remove(&channel) {
                        let _ = p.tx.send(delivery);
                    }
                }
                _ => {}
            }
        }
    };
    let mut st = lock(&state);
    if st.generation == generation {
        st.lost = Some(reason);
        // Dropping the senders wakes every waiter with `Disconnected`.
        st.pending.clear();
        st.hello = None;
        credit_changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn alive() -> Liveness {
        Arc::new(|| None)
    }

    /// A scripted agent: answers each frame through `answer`, which may stay silent.
    fn fake_agent(
        mut stream: UnixStream,
        answer: impl Fn(&Message) -> Option<Message> + Send + 'static,
    ) {
        std::thread::spawn(move || {
            let mut reader = FrameReader::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                reader.push(&buf[..n]);
                while let Ok(Some(frame)) = reader.next_frame() {
                    let msg = frame.message().unwrap();
                    if let Some(reply) = answer(&msg) {
                        let out = encode_message(frame.channel, frame.seq, &reply).unwrap();
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }

    fn polite(msg: &Message) -> Option<Message> {
        match msg {
            Message::Hello { .. } => Some(Message::HelloAck {
                version: PROTOCOL_VERSION,
            }),
            Message::Request(Request::Ping) => Some(Message::Response(Response::Pong)),
            Message::Request(Request::ReadFile { path }) => {
                Some(Message::Response(Response::Error(AgentError::Path {
                    op: "open".into(),
                    path: path.clone(),
                    errno: 2,
                })))
            }
            _ => None,
        }
    }

    #[test]
    fn the_uart_window_can_be_set_for_measurements_but_not_below_the_batch() {
        assert_eq!(window_from(None), UART_WINDOW);
        assert_eq!(window_from(Some("65536")), 65536);
        assert_eq!(window_from(Some("2048")), AGENT_CREDIT_BATCH);
        assert_eq!(window_from(Some("lots")), UART_WINDOW);
    }

    #[test]
    fn handshake_and_call() {
        let (host, guest) = UnixStream::pair().unwrap();
        fake_agent(guest, polite);
        let link = Link::connect("t", host, alive(), Duration::from_secs(5)).unwrap();
        let resp = link
            .call(0, &Request::Ping, Duration::from_secs(5))
            .unwrap();
        assert_eq!(resp, Response::Pong);
        let err = link
            .call(
                0,
                &Request::ReadFile { path: "/x".into() },
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert_eq!(err.agent_error().and_then(AgentError::errno), Some(2));
        assert_eq!(
            err.to_string(),
            "VM t: read_file on channel 0: open /x: ENOENT (errno 2)"
        );
    }

    #[test]
    fn handshake_resends_until_guest_listens() {
        let (host, guest) = UnixStream::pair().unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&seen);
        // Ignores the first two Hellos, as a guest that is still booting would.
        fake_agent(guest, move |m| match m {
            Message::Hello { .. } if counter.fetch_add(1, Ordering::SeqCst) < 2 => None,
            other => polite(other),
        });
        Link::connect("t", host, alive(), Duration::from_secs(5)).unwrap();
        assert!(seen.load(Ordering::SeqCst) >= 3);
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let (host, guest) = UnixStream::pair().unwrap();
        fake_agent(guest, |_| Some(Message::HelloAck { version: 999 }));
        assert_mismatch(host, 999);
    }

    /// Connects on `host` and checks the handshake fails naming both versions.
    fn assert_mismatch(host: UnixStream, agent: u32) {
        let err = Link::connect("t", host, alive(), Duration::from_secs(5))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "VM t: protocol version mismatch: host speaks {PROTOCOL_VERSION}, agent speaks {agent}"
            )
        );
    }

    #[test]
    fn an_agent_of_protocol_4_is_named_as_such() {
        // A protocol-4 agent cannot check our Hello and refuses it in a frame whose
        // payload carries byte-wise FNV-1a, as protocol 4 did.
        fn fnv1a(data: &[u8]) -> u32 {
            data.iter().fold(0x811c_9dc5, |h: u32, &b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            })
        }
        let (host, mut guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let _ = guest.read(&mut buf);
            let refusal = Message::Response(Response::Error(AgentError::InvalidRequest {
                op: "receive".into(),
                reason: "payload checksum mismatch".into(),
            }));
            let mut frame = encode_message(0, 0, &refusal).unwrap();
            let sum = fnv1a(&frame[provium_proto::FRAME_HEADER_LEN..]);
            frame[16..20].copy_from_slice(&sum.to_le_bytes());
            let header_sum = fnv1a(&frame[..20]);
            frame[20..24].copy_from_slice(&header_sum.to_le_bytes());
            let _ = guest.write_all(&frame);
            std::thread::sleep(Duration::from_secs(2));
        });
        assert_mismatch(host, 4);
    }

    #[test]
    fn silent_agent_times_out() {
        let (host, guest) = UnixStream::pair().unwrap();
        fake_agent(guest, |_| None);
        let start = Instant::now();
        let err = Link::connect("t", host, alive(), Duration::from_millis(600))
            .err()
            .unwrap();
        assert!(matches!(err, LinkError::HandshakeTimeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn dead_vm_ends_wait_at_once() {
        let (host, guest) = UnixStream::pair().unwrap();
        fake_agent(guest, |m| match m {
            Message::Hello { .. } => polite(m),
            _ => None,
        });
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&dead);
        let liveness: Liveness = Arc::new(move || {
            flag.load(Ordering::SeqCst)
                .then(|| "QEMU exited with status 1".to_string())
        });
        let link = Link::connect("t", host, liveness, Duration::from_secs(5)).unwrap();
        dead.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let err = link
            .call(0, &Request::Ping, Duration::from_secs(60))
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(
            err.to_string().contains("QEMU exited with status 1"),
            "{err}"
        );
        assert!(err.is_vm_failure());
    }

    #[test]
    fn closed_socket_is_reported() {
        let (host, guest) = UnixStream::pair().unwrap();
        let link = {
            fake_agent(guest.try_clone().unwrap(), polite);
            Link::connect("t", host, alive(), Duration::from_secs(5)).unwrap()
        };
        guest.shutdown(Shutdown::Both).unwrap();
        let err = link
            .call(0, &Request::Ping, Duration::from_secs(5))
            .unwrap_err();
        assert!(
            matches!(err, LinkError::Disconnected { .. }),
            "expected a lost connection, got {err}"
        );
    }

    /// A UART-like agent: answers the handshake, credits every 4 KiB it reads when
    /// `credits` is set, answers a `WriteFile` with `Done` once its data has all
    /// arrived, and records how many bytes it has read.
    fn uart_agent(mut stream: UnixStream, credits: bool, read: Arc<AtomicU32>) {
        std::thread::spawn(move || {
            let mut reader = FrameReader::new();
            let mut buf = [0u8; 1024];
            let mut uncredited = 0;
            let mut due = 0;
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                read.fetch_add(n as u32, Ordering::SeqCst);
                reader.push(&buf[..n]);
                let mut out = Vec::new();
                while let Ok(Some(frame)) = reader.next_frame() {
                    let reply = match frame.message().unwrap() {
                        Message::Hello { .. } => {
                            uncredited = 0;
                            Message::HelloAck {
                                version: PROTOCOL_VERSION,
                            }
                        }
                        Message::Request(Request::WriteFile { size, .. }) if size > 0 => {
                            due = size;
                            continue;
                        }
                        Message::Data { bytes } => {
                            due -= bytes.len() as u64;
                            if due > 0 {
                                continue;
                            }
                            Message::Response(Response::Done)
                        }
                        _ => Message::Response(Response::Done),
                    };
                    out.extend(encode_message(frame.channel, frame.seq, &reply).unwrap());
                }
                uncredited += n;
                if credits && uncredited >= 4096 {
                    let credit = Message::Credit {
                        bytes: uncredited as u32,
                    };
                    out.extend(encode_message(0, 0, &credit).unwrap());
                    uncredited = 0;
                }
                if stream.write_all(&out).is_err() {
                    return;
                }
            }
        });
    }

    /// Writes 1 MiB to a file, in `Data` frames after the request.
    fn big_write(link: &Link, timeout: Duration) -> Result<Response, LinkError> {
        let data = vec![7; 1 << 20];
        let request = Request::WriteFile {
            path: "/big".into(),
            size: data.len() as u64,
            mode: None,
        };
        link.call_with_data(0, &request, &data, timeout)
            .map(|(response, _)| response)
    }

    #[test]
    fn paced_link_stops_at_the_window_without_credit() {
        let (host, guest) = UnixStream::pair().unwrap();
        let read = Arc::new(AtomicU32::new(0));
        uart_agent(guest, false, Arc::clone(&read));
        let link = Link::connect("t", host, alive(), Duration::from_secs(5)).unwrap();
        let after_hello = read.load(Ordering::SeqCst);
        link.pace_for_uart();
        let err = big_write(&link, Duration::from_millis(500)).unwrap_err();
        assert!(matches!(err, LinkError::Timeout { .. }), "{err}");
        let paced = u64::from(read.load(Ordering::SeqCst) - after_hello);
        assert_eq!(paced, UART_WINDOW, "bytes sent without credit");
    }

    #[test]
    fn waiting_for_credit_ends_when_the_vm_dies() {
        let (host, guest) = UnixStream::pair().unwrap();
        uart_agent(guest, false, Arc::new(AtomicU32::new(0)));
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&dead);
        let liveness: Liveness = Arc::new(move || {
            flag.load(Ordering::SeqCst)
                .then(|| "QEMU exited with status 1".to_string())
        });
        let link = Link::connect("t", host, liveness, Duration::from_secs(5)).unwrap();
        link.pace_for_uart();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            dead.store(true, Ordering::SeqCst);
        });
        let start = Instant::now();
        let err = big_write(&link, Duration::from_secs(60)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(matches!(err, LinkError::VmDead { .. }), "{err}");
    }

    #[test]
    fn paced_link_sends_everything_as_credits_arrive() {
        let (host, guest) = UnixStream::pair().unwrap();
        let read = Arc::new(AtomicU32::new(0));
        uart_agent(guest, true, Arc::clone(&read));
        let link = Link::connect("t", host, alive(), Duration::from_secs(5)).unwrap();
        link.pace_for_uart();
        for _ in 0..2 {
            assert_eq!(
                big_write(&link, Duration::from_secs(20)).unwrap(),
                Response::Done
            );
        }
    }

    #[test]
    fn reconnect_after_resync() {
        let (host, guest) = UnixStream::pair().unwrap();
        fake_agent(guest, polite);
        let link = Link::connect("t", host, alive(), Duration::from_secs(5)).unwrap();
        let (host2, guest2) = UnixStream::pair().unwrap();
        fake_agent(guest2, polite);
        link.resync_and_hello(host2, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            link.call(0, &Request::Ping, Duration::from_secs(5))
                .unwrap(),
            Response::Pong
        );
    }
}
