//! One channel's request loop: reads requests from its socket, performs them, answers.
//! The main channel runs this on a thread of the agent; workers run it in their own
//! forked process or clone(CLONE_THREAD) thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use provium_proto::{encode_message, AgentError, FrameReader, Message, Request, Response};

use crate::exec::{self, Jobs};
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
    fn handle(&mut self, req: Request) -> Response {
        let op = req.op_name();
        let result = match req {
            Request::Exec { cmd } => exec::exec(&cmd),
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
            | Request::Quiesce => Err(AgentError::Unsupported {
                op: op.to_string(),
                reason: "only the main channel's router performs it".to_string(),
            }),
        };
        result.unwrap_or_else(Response::Error)
    }
}

/// Serves requests from `sock` until the other end closes it.
pub fn serve(mut sock: UnixStream, mode: Mode) {
    let mut worker = Worker {
        mode,
        jobs: Jobs::default(),
    };
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log!("channel read failed: {e}");
                return;
            }
        };
        reader.push(&buf[..n]);
        while let Ok(Some(frame)) = reader.next_frame() {
            let response = match frame.message() {
                Ok(Message::Request(req)) => worker.handle(req),
                Ok(other) => Response::Error(AgentError::InvalidRequest {
                    op: "dispatch".to_string(),
                    reason: format!("a worker got a non-request message {other:?}"),
                }),
                Err(e) => Response::Error(AgentError::InvalidRequest {
                    op: "decode".to_string(),
                    reason: e.to_string(),
                }),
            };
            let out = encode_message(frame.channel, frame.seq, &Message::Response(response))
                .or_else(|e| {
                    encode_message(
                        frame.channel,
                        frame.seq,
                        &Message::Response(Response::Error(AgentError::InvalidRequest {
                            op: "encode".to_string(),
                            reason: e.to_string(),
                        })),
                    )
                });
            let Ok(out) = out else { return };
            if sock.write_all(&out).is_err() {
                return;
            }
        }
    }
}
