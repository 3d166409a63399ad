//! One channel's request loop: takes frames from its [`Inbox`], performs requests,
//! answers through its [`Outbox`]. The main channel and thread workers run it on a
//! thread of the router's process, fed through a mailbox; process workers in their
//! own forked process, fed through a socket pair.

use std::collections::VecDeque;

use provium_proto::{seal_data_frame, AgentError, Frame, Message, Request, Response};

use crate::channel::{cancel_of, Inbox, Mode, Outbox};
use crate::exec::{self, Jobs, Watch};
use crate::files::{self, Upload};
use crate::session;
use crate::syscall;

struct Worker<'a> {
    mode: Mode,
    jobs: Jobs,
    outbox: &'a dyn Outbox,
    /// The `write_file` whose data is arriving, if any.
    upload: Option<Upload>,
    /// The buffer `read_file` frames are built in, kept from one request to the next.
    frame: Vec<u8>,
}

impl Worker<'_> {
    /// Performs `req`; an `exec` watches the channel through `watch` for a cancel.
    fn handle(&mut self, seq: u32, req: Request, watch: Option<Watch<'_>>) -> Option<Response> {
        let op = req.op_name();
        let result = match req {
            Request::Exec { cmd, timeout_ms } => exec::exec(&cmd, timeout_ms, watch),
            Request::ReadFile { path } => self.read_file(seq, &path),
            Request::WriteFile { path, size, mode } => {
                match Upload::start(seq, path, size, mode) {
                    Ok(upload) if upload.complete() => upload.finish(),
                    Ok(upload) => {
                        // Answered once the last `Data` frame is written.
                        self.upload = Some(upload);
                        return None;
                    }
                    Err(e) => Err(e),
                }
            }
            Request::Dmesg => files::dmesg(),
            Request::MountVfs if self.mode == Mode::Host => Err(AgentError::Unsupported {
                op: op.to_string(),
                reason: "the agent runs on the host (--serve-unix)".to_string(),
            }),
            Request::MountVfs => files::mount_vfs(),
            Request::Syscall {
                nr,
                args,
                bufs,
                ptrs,
            } => syscall::syscall(op, nr, &args, bufs, &ptrs),
            Request::Ioctl { fd, cmd, data } => Ok(syscall::ioctl(fd, cmd, data)),
            Request::IoctlBuf { fd, cmd, arg, ptrs } => syscall::ioctl_buf(fd, cmd, arg, &ptrs),
            Request::Background { cmd } => self.jobs.start(&cmd),
            Request::JobWait { id, timeout_ms } => self.jobs.wait(id, timeout_ms),
            Request::JobKill { id } => self.jobs.kill(id),
            Request::Ping => Ok(Response::Pong),
            Request::Shutdown
            | Request::Spawn { .. }
            | Request::WorkerKill { .. }
            | Request::Quiesce
            | Request::Cancel { .. } => Err(AgentError::Unsupported {
                op: op.to_string(),
                reason: "only the main channel's router performs it".to_string(),
            }),
            Request::Session { .. } => Err(AgentError::Unsupported {
                op: op.to_string(),
                reason: "a session is run by the channel's serve loop".to_string(),
            }),
        };
        Some(result.unwrap_or_else(Response::Error))
    }

    fn read_file(&mut self, seq: u32, path: &str) -> Result<Response, AgentError> {
        let outbox = self.outbox;
        let mut send = |frame: &mut [u8]| {
            seal_data_frame(frame, outbox.channel(), seq).is_ok() && outbox.data(frame)
        };
        files::read_file(path, outbox.chunk(), &mut self.frame, &mut send)
    }

    /// Takes one piece of the upload `seq`; answers once the upload is complete or
    /// has failed. Data for any other request (one abandoned or already answered) is
    /// dropped.
    fn data(&mut self, seq: u32, bytes: &[u8]) {
        let Some(upload) = self.upload.as_mut().filter(|u| u.seq == seq) else {
            return;
        };
        let result = match upload.write(bytes) {
            Ok(()) if !upload.complete() => return,
            Ok(()) => self.upload.take().map(Upload::finish),
            Err(e) => {
                self.upload = None;
                Some(Err(e))
            }
        };
        if let Some(result) = result {
            self.outbox
                .answer(seq, result.unwrap_or_else(Response::Error));
        }
    }
}

/// Serves requests from `inbox` until the channel closes. A `Cancel` for the request
/// being performed stops its command (or drops its upload); one arriving when nothing
/// runs is stale and dropped. A new request abandons an upload still waiting for data.
pub fn serve(inbox: &mut dyn Inbox, outbox: &dyn Outbox, mode: Mode) {
    let mut worker = Worker {
        mode,
        jobs: Jobs::default(),
        outbox,
        upload: None,
        frame: Vec::new(),
    };
    // Frames that arrived while a command ran (the channel is read to hear a cancel).
    let mut queued: VecDeque<Frame> = VecDeque::new();
    loop {
        let Some(frame) = queued.pop_front().or_else(|| inbox.next()) else {
            return;
        };
        let seq = frame.seq;
        match frame.data() {
            Ok(Some(bytes)) => {
                worker.data(seq, bytes);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                if worker.upload.as_ref().is_some_and(|u| u.seq == seq) {
                    worker.upload = None;
                    outbox.answer(
                        seq,
                        Response::Error(AgentError::InvalidRequest {
                            op: "write_file".to_string(),
                            reason: format!("bad data: {e}"),
                        }),
                    );
                }
                continue;
            }
        }
        let response = match frame.message() {
            Ok(Message::Request(Request::Cancel { seq: cancelled })) => {
                if worker.upload.as_ref().is_some_and(|u| u.seq == cancelled) {
                    worker.upload = None;
                }
                continue;
            }
            Ok(Message::Request(Request::Session { command, pty, term })) => {
                worker.upload = None;
                let spec = session::Spec { command, pty, term };
                session::run(seq, spec, inbox, outbox, &mut queued, mode)
                    .unwrap_or_else(Response::Error)
            }
            // Input for a session that has ended: nobody reads it.
            Ok(Message::Input { .. } | Message::Resize { .. }) => continue,
            Ok(Message::Request(req)) => {
                worker.upload = None;
                let fd = inbox.fd();
                let mut heard_cancel = || read_while_busy(inbox, &mut queued, seq);
                let watch = Watch {
                    fd,
                    readable: &mut heard_cancel,
                };
                match worker.handle(seq, req, Some(watch)) {
                    Some(response) => response,
                    None => continue,
                }
            }
            Ok(other) => Response::Error(AgentError::InvalidRequest {
                op: "dispatch".to_string(),
                reason: format!("a worker got a non-request message {other:?}"),
            }),
            Err(e) => Response::Error(AgentError::InvalidRequest {
                op: "decode".to_string(),
                reason: e.to_string(),
            }),
        };
        outbox.answer(seq, response);
    }
}

/// Takes what arrived on the channel while request `busy` runs: true when it holds a
/// cancel of that request, or when the channel closed (no one waits for the answer);
/// every other frame is kept for the serve loop.
fn read_while_busy(inbox: &mut dyn Inbox, queued: &mut VecDeque<Frame>, busy: u32) -> bool {
    let mut arrived = VecDeque::new();
    let open = inbox.take_ready(&mut arrived);
    let mut cancelled = !open;
    for frame in arrived {
        match cancel_of(&frame) {
            Some(seq) => cancelled |= seq == busy,
            None => queued.push_back(frame),
        }
    }
    cancelled
}
