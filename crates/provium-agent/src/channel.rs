//! How one channel's request loop (`serve.rs`) gets its frames and sends its answers.
//!
//! A channel served by a thread of the router's process (the main channel, thread
//! workers) gets frames the router has already checked through a [`Mailbox`]: moved,
//! not copied, re-encoded or checksummed again. It answers by writing straight to the
//! link through a [`LinkOutbox`]. A forked process worker gets its frames over a
//! socket pair ([`SocketInbox`]) and answers into it ([`SocketOutbox`]); the router
//! relays those answers.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use provium_proto::{encode_message, Frame, FrameReader, Message, Request, Response};

use crate::log::log;
use crate::sys;

/// Where the agent runs: in a guest, or on the host for testing (`--serve-unix`),
/// where powering off or mounting over `/dev` would hit the host itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Guest,
    Host,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a channel's frames come from.
pub trait Inbox {
    /// The next frame, waiting for one; `None` once the channel is closed.
    fn next(&mut self) -> Option<Frame>;
    /// A descriptor that polls readable when frames (or the channel's end) arrived,
    /// for a request that waits on something else meanwhile (`exec`).
    fn fd(&self) -> RawFd;
    /// Appends the frames that arrived, without waiting; false once the channel is
    /// closed.
    fn take_ready(&mut self, into: &mut VecDeque<Frame>) -> bool;
}

/// Where a channel's answers go.
pub trait Outbox {
    /// Sends one `Data` frame of a streamed answer; false when no one takes it any
    /// more (the channel is gone, the link failed), so the stream should stop.
    fn data(&self, frame: &[u8]) -> bool;
    /// Sends the answer that ends request `seq`.
    fn answer(&self, seq: u32, response: Response);
    /// How much data one `Data` frame should carry on this link.
    fn chunk(&self) -> usize;
    /// The channel the answers are for.
    fn channel(&self) -> u32;
}

/// Encodes `response` as the answer to `seq` on `channel`; a response too large to
/// frame becomes an error naming why.
pub fn encode_answer(channel: u32, seq: u32, response: Response) -> Option<Vec<u8>> {
    encode_message(channel, seq, &Message::Response(response))
        .or_else(|e| {
            encode_message(
                channel,
                seq,
                &Message::Response(Response::Error(provium_proto::AgentError::InvalidRequest {
                    op: "encode".to_string(),
                    reason: e.to_string(),
                })),
            )
        })
        .map_err(|e| log!("cannot encode an answer on channel {channel}: {e}"))
        .ok()
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Frame>,
    closed: bool,
}

/// Frames for a channel served in the router's process: the router pushes, the
/// channel's thread takes. An eventfd counts the pushes, so the thread can wait for
/// it or poll it beside a command's pipes.
pub struct Mailbox {
    queue: Mutex<Queue>,
    event: OwnedFd,
}

impl Mailbox {
    pub fn new() -> Result<Arc<Mailbox>, provium_proto::AgentError> {
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(sys::os_error("eventfd"));
        }
        Ok(Arc::new(Mailbox {
            queue: Mutex::new(Queue::default()),
            // SAFETY: eventfd succeeded; the descriptor has no other owner.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes the 8 bytes of `one`, alive for the call. A full counter
        // (2^64 - 2 pushes) cannot happen.
        unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Resets the eventfd's count, so the next poll waits for the next push.
    fn clear_signal(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count`; EAGAIN (no push) is fine.
        unsafe { libc::read(self.event.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }

    /// Queues a frame for the channel's thread; never blocks.
    pub fn push(&self, frame: Frame) {
        lock(&self.queue).frames.push_back(frame);
        self.signal();
    }

    /// Ends the channel: its thread's loop ends once it has taken what was queued.
    pub fn close(&self) {
        lock(&self.queue).closed = true;
        self.signal();
    }

    /// The serving thread's view of the mailbox.
    pub fn inbox(self: &Arc<Mailbox>) -> MailboxInbox {
        MailboxInbox(Arc::clone(self))
    }
}

/// The serving thread's end of a [`Mailbox`].
pub struct MailboxInbox(Arc<Mailbox>);

impl Inbox for MailboxInbox {
    fn next(&mut self) -> Option<Frame> {
        loop {
            {
                let mut queue = lock(&self.0.queue);
                if let Some(frame) = queue.frames.pop_front() {
                    // The frames behind it may have been counted by the wakeup that
                    // delivered this one: keep the descriptor readable for them, so
                    // a request that polls it (a cancel, a session's input) sees them.
                    if !queue.frames.is_empty() {
                        self.0.signal();
                    }
                    return Some(frame);
                }
                if queue.closed {
                    return None;
                }
            }
            let mut pfd = libc::pollfd {
                fd: self.0.event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is the one entry poll is told about.
            unsafe { libc::poll(&mut pfd, 1, -1) };
            self.0.clear_signal();
        }
    }

    fn fd(&self) -> RawFd {
        self.0.event.as_raw_fd()
    }

    fn take_ready(&mut self, into: &mut VecDeque<Frame>) -> bool {
        self.0.clear_signal();
        let mut queue = lock(&self.0.queue);
        into.extend(queue.frames.drain(..));
        !queue.closed
    }
}

/// A forked worker's end of its socket pair with the router.
pub struct SocketInbox {
    sock: UnixStream,
    reader: FrameReader,
}

impl SocketInbox {
    pub fn new(sock: UnixStream) -> SocketInbox {
        SocketInbox {
            sock,
            reader: FrameReader::new(),
        }
    }

    /// Reads once; false when the socket closed or failed.
    fn fill(&mut self) -> bool {
        loop {
            match self.reader.read_from(&mut self.sock) {
                Ok(0) => return false,
                Ok(_) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log!("channel read failed: {e}");
                    return false;
                }
            }
        }
    }
}

impl Inbox for SocketInbox {
    fn next(&mut self) -> Option<Frame> {
        loop {
            // The router only forwards frames it has checked; one failing here was
            // damaged on the socket pair, which does not happen.
            if let Ok(Some(frame)) = self.reader.next_frame() {
                return Some(frame);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn take_ready(&mut self, into: &mut VecDeque<Frame>) -> bool {
        // Called once the socket polled readable, so this read does not block.
        let open = self.fill();
        while let Ok(Some(frame)) = self.reader.next_frame() {
            into.push_back(frame);
        }
        open
    }
}

/// A forked worker's answers, written into its socket pair for the router to relay.
pub struct SocketOutbox {
    pub sock: UnixStream,
    pub channel: u32,
    pub chunk: usize,
}

impl Outbox for SocketOutbox {
    fn data(&self, frame: &[u8]) -> bool {
        (&self.sock).write_all(frame).is_ok()
    }

    fn answer(&self, seq: u32, response: Response) {
        if let Some(frame) = encode_answer(self.channel, seq, response) {
            let _ = (&self.sock).write_all(&frame);
        }
    }

    fn chunk(&self) -> usize {
        self.chunk
    }

    fn channel(&self) -> u32 {
        self.channel
    }
}

/// The request a `Cancel` frame cancels; `None` for any other frame, which is not
/// decoded here (it may be a large `Data` frame).
pub fn cancel_of(frame: &Frame) -> Option<u32> {
    if frame.payload.first() != Some(&Request::Cancel { seq: 0 }.tag()) {
        return None;
    }
    match frame.message() {
        Ok(Message::Request(Request::Cancel { seq })) => Some(seq),
        _ => None,
    }
}
