//! One channel's request loop: reads requests from its socket, performs them, answers.
//! The main channel runs this on a thread of the agent; workers run it in their own
//! forked process or clone(CLONE_THREAD) thread.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use provium_proto::{encode_message, AgentError, Frame, FrameReader, Message, Request, Response};

use crate::exec::{self, Jobs, Watch};
use crate::files;
use crate::log::log;
use crate::syscall;

/// Where the agent runs: in a guest, or on the host for testing (`--serve-unix`),
/// where powering off or mounting over `/dev` would hit the host itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Guest,
    Host,
}

struct Worker {
    mode: Mode,
    jobs: Jobs,
}

impl Worker {
    /// Performs `req`; an `exec` watches the channel through `watch` for a cancel.
    fn handle(&mut self, req: Request, watch: Option<Watch<'_>>) -> Response {
        let op = req.op_name();
        let result = match req {
            Request::Exec { cmd, timeout_ms } => exec::exec(&cmd, timeout_ms, watch),
            Request::ReadFile { path } => files::read_file(&path),
            Request::WriteFile { path, data, mode } => files::write_file(&path, &data, mode),
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
        };
        result.unwrap_or_else(Response::Error)
    }
}

/// Serves requests from `sock` until the other end closes it. A `Cancel` for the
/// request being performed stops its command; one arriving when nothing runs is
/// stale (the command ended first) and is dropped.
pub fn serve(sock: UnixStream, mode: Mode) {
    let mut worker = Worker {
        mode,
        jobs: Jobs::default(),
    };
    let mut reader = FrameReader::new();
    // Frames read while a command ran (the channel is read to hear a cancel).
    let mut queued: VecDeque<Frame> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let frame = match queued.pop_front() {
            Some(frame) => frame,
            None => match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(_) => match (&sock).read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        reader.push(&buf[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log!("channel read failed: {e}");
                        return;
                    }
                },
            },
        };
        let seq = frame.seq;
        let response = match frame.message() {
            Ok(Message::Request(Request::Cancel { .. })) => continue,
            Ok(Message::Request(req)) => {
                let mut heard_cancel =
                    || read_while_busy(&sock, &mut reader, &mut queued, &mut buf, seq);
                let watch = Watch {
                    fd: sock.as_raw_fd(),
                    readable: &mut heard_cancel,
                };
                worker.handle(req, Some(watch))
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
        let out = encode_message(frame.channel, seq, &Message::Response(response)).or_else(|e| {
            encode_message(
                frame.channel,
                seq,
                &Message::Response(Response::Error(AgentError::InvalidRequest {
                    op: "encode".to_string(),
                    reason: e.to_string(),
                })),
            )
        });
        let Ok(out) = out else { return };
        if (&sock).write_all(&out).is_err() {
            return;
        }
    }
}

/// Reads what arrived on the channel while request `busy` runs: true when it holds a
/// cancel of that request, or when the channel closed (no one waits for the answer);
/// every other frame is kept for the serve loop.
fn read_while_busy(
    sock: &UnixStream,
    reader: &mut FrameReader,
    queued: &mut VecDeque<Frame>,
    buf: &mut [u8],
    busy: u32,
) -> bool {
    match (&*sock).read(buf) {
        Ok(0) => return true,
        Ok(n) => reader.push(&buf[..n]),
        Err(_) => return false,
    }
    let mut cancelled = false;
    while let Ok(Some(frame)) = reader.next_frame() {
        match frame.message() {
            Ok(Message::Request(Request::Cancel { seq })) if seq == busy => cancelled = true,
            Ok(Message::Request(Request::Cancel { .. })) => {}
            _ => queued.push_back(frame),
        }
    }
    cancelled
}
