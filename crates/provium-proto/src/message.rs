//! The messages a frame carries: the handshake, the request enum and the response
//! enum, each a one-byte tag followed by its fields.

use crate::error::{AgentError, ProtoError};
use crate::wire::{Reader, Writer};

/// A raw syscall takes at most six arguments on x86_64.
pub const MAX_SYSCALL_ARGS: usize = 6;

/// A syscall argument replaced by a pointer to a guest copy of `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallBuf {
    /// 0-based argument index.
    pub arg_idx: u32,
    pub data: Vec<u8>,
    /// Return the buffer's contents after the call; an input-only buffer never
    /// travels back.
    pub output: bool,
}

/// A pointer written into a syscall buffer: `data_len` guest bytes (starting with
/// `data`, zero-filled after it) whose address goes at `ptr_offset` of the buffer
/// passed as argument `buf_idx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtrPatch {
    /// The argument index of the buffer to patch (a `SyscallBuf::arg_idx`).
    pub buf_idx: u32,
    pub ptr_offset: u64,
    pub data_len: u64,
    pub data: Vec<u8>,
    /// Return the sub-buffer's contents after the call.
    pub output: bool,
}

/// A pointer written into an ioctl argument struct (see [`PtrPatch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoctlPtr {
    pub ptr_offset: u64,
    pub buf_len: u64,
    pub data: Vec<u8>,
    pub output: bool,
}

/// What the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Run `cmd` with `/bin/sh -c` in its own process group; after `timeout_ms` (0:
    /// no limit) the agent kills the group and answers `CommandTimedOut`.
    Exec {
        cmd: String,
        timeout_ms: u64,
    },
    ReadFile {
        path: String,
    },
    /// Create or truncate `path` and write `size` bytes into it, which follow in
    /// `Data` messages with this request's channel and sequence number; `mode`
    /// (permission bits) defaults to 0644.
    WriteFile {
        path: String,
        size: u64,
        mode: Option<u32>,
    },
    /// The kernel log buffer.
    Dmesg,
    /// Mount proc, sysfs, securityfs and devtmpfs where missing.
    MountVfs,
    /// Sync and power off.
    Shutdown,
    /// A raw syscall; covers plain integer calls, buffers and pointer patching.
    Syscall {
        nr: i64,
        args: Vec<u64>,
        bufs: Vec<SyscallBuf>,
        ptrs: Vec<PtrPatch>,
    },
    /// `ioctl(fd, cmd, data?)`, with `data` passed by pointer.
    Ioctl {
        fd: i32,
        cmd: u64,
        data: Option<Vec<u8>>,
    },
    /// `ioctl(fd, cmd, &arg)` with pointers patched into `arg`.
    IoctlBuf {
        fd: i32,
        cmd: u64,
        arg: Vec<u8>,
        ptrs: Vec<IoctlPtr>,
    },
    /// Start `cmd` asynchronously.
    Background {
        cmd: String,
    },
    /// Wait up to `timeout_ms` (0: poll) for a background job.
    JobWait {
        id: u64,
        timeout_ms: u64,
    },
    /// Kill a background job's process group and return its final result.
    JobKill {
        id: u64,
    },
    /// Start a worker (a forked process, or with `thread` a thread with its own
    /// credentials) on a new channel.
    Spawn {
        thread: bool,
    },
    /// End the worker serving `channel`.
    WorkerKill {
        channel: u32,
    },
    /// Acknowledge, then ignore everything until the next `Hello` (before snapshots).
    Quiesce,
    /// Liveness probe.
    Ping,
    /// The host gave up on the request `seq` on this channel: a command it started is
    /// killed (its process group), so the channel is free for the next request. Never
    /// answered.
    Cancel {
        seq: u32,
    },
    /// Runs `command` with `/bin/sh -c` in a session of its own, interactively: the
    /// host sends its input in `Input` messages and gets its output in `Output`
    /// messages, all with this request's channel and sequence number, until the
    /// answer `SessionEnded`. With `pty`, on a pseudo-terminal of that size whose
    /// `TERM` is `term`; otherwise on pipes.
    Session {
        command: String,
        pty: Option<PtySize>,
        term: String,
    },
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Which of a session's output streams an `Output` message carries.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// What the agent answers; `Error` for any request that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `exit_code` is 128+n when the command died from signal n.
    Exec {
        exit_code: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// A `ReadFile`'s end: the file's contents went before it in `Data` messages
    /// with the request's channel and sequence number, `size` bytes in all.
    File {
        size: u64,
    },
    /// Success without a value (WriteFile, MountVfs, Shutdown, WorkerKill).
    Done,
    Dmesg {
        log: Vec<u8>,
    },
    /// `ret` is the raw result (negative errno on failure); `bufs` are the `output`
    /// argument buffers after the call in argument-index order (for `IoctlBuf`, the
    /// struct), `outputs` the `output` pointer targets in request order.
    Syscall {
        ret: i64,
        bufs: Vec<Vec<u8>>,
        outputs: Vec<Vec<u8>>,
    },
    /// `data` is the argument after the call when the ioctl reads or has no direction.
    Ioctl {
        ret: i64,
        data: Option<Vec<u8>>,
    },
    Job {
        id: u64,
        pid: i32,
    },
    /// `exit_code` is -1 while `running`; output is everything captured so far.
    JobStatus {
        running: bool,
        exit_code: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// `pid` is the worker's process id, or its thread id for a thread worker.
    Spawned {
        channel: u32,
        pid: i32,
    },
    Quiesced,
    Pong,
    /// A `Session`'s end: its shell exited with `exit_code` (128+n for signal n),
    /// after all of its output was sent.
    SessionEnded {
        exit_code: i32,
    },
    Error(AgentError),
}

/// Everything a frame can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a connection. Its encoding (tag 0x01, u32 version) never changes.
    Hello {
        version: u32,
    },
    /// The agent's answer, carrying the agent's version whether or not it matches.
    HelloAck {
        version: u32,
    },
    /// Sent by the agent only on the ttyS1 fallback: it has consumed `bytes` more
    /// bytes of the host's stream, so the host may send that many more. The UART
    /// has no backpressure of its own (see `docs/protocol.md`, "Flow control").
    Credit {
        bytes: u32,
    },
    /// A piece of the data of the request or answer with the same channel and
    /// sequence number (a `WriteFile`'s contents, a `ReadFile`'s answer), so large
    /// transfers move in pipelined chunks with a checksum each.
    Data {
        bytes: Vec<u8>,
    },
    /// Input for the `Session` with the same channel and sequence number: bytes for
    /// its terminal or its stdin; empty for the end of the input (on pipes, stdin
    /// closes; on a pty, the terminal hangs up).
    Input {
        bytes: Vec<u8>,
    },
    /// The `Session`'s terminal changed size (the agent sets it; the kernel sends
    /// SIGWINCH to the foreground job).
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Output of the `Session` with the same channel and sequence number, on
    /// `stream` ([`STDOUT`] or [`STDERR`]; a pty has only stdout).
    Output {
        stream: u8,
        bytes: Vec<u8>,
    },
    Request(Request),
    Response(Response),
}

const TAG_HELLO: u8 = 0x01;
const TAG_HELLO_ACK: u8 = 0x02;
const TAG_CREDIT: u8 = 0x03;
/// The tag of [`Message::Data`].
pub const TAG_DATA: u8 = 0x04;
/// The tag of [`Message::Input`].
pub const TAG_INPUT: u8 = 0x05;
/// The tag of [`Message::Resize`].
pub const TAG_RESIZE: u8 = 0x06;
/// The tag of [`Message::Output`].
pub const TAG_OUTPUT: u8 = 0x07;

/// Whether a frame with this tag is a piece of an answer still to come (the call
/// with its channel and sequence number stays pending): `Data` and `Output`.
pub fn is_partial_answer(tag: u8) -> bool {
    tag == TAG_DATA || tag == TAG_OUTPUT
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        self.encode_after(Vec::new())
    }

    /// Appends the encoding to `out` (e.g. after a frame header still to be filled),
    /// so a large message is written once.
    pub fn encode_after(&self, out: Vec<u8>) -> Vec<u8> {
        let mut w;
        match self {
            Message::Hello { version } => {
                w = Writer::after(out, TAG_HELLO);
                w.u32(*version);
            }
            Message::HelloAck { version } => {
                w = Writer::after(out, TAG_HELLO_ACK);
                w.u32(*version);
            }
            Message::Credit { bytes } => {
                w = Writer::after(out, TAG_CREDIT);
                w.u32(*bytes);
            }
            Message::Data { bytes } => {
                w = Writer::after(out, TAG_DATA);
                w.bytes(bytes);
            }
            Message::Input { bytes } => {
                w = Writer::after(out, TAG_INPUT);
                w.bytes(bytes);
            }
            Message::Resize { rows, cols } => {
                w = Writer::after(out, TAG_RESIZE);
                w.u32(u32::from(*rows)).u32(u32::from(*cols));
            }
            Message::Output { stream, bytes } => {
                w = Writer::after(out, TAG_OUTPUT);
                w.u32(u32::from(*stream)).bytes(bytes);
            }
            Message::Request(req) => w = req.encode(out),
            Message::Response(resp) => w = resp.encode(out),
        }
        w.out
    }

    pub fn decode(payload: &[u8]) -> Result<Message, ProtoError> {
        let mut r = Reader::new(payload);
        let tag = r.u8("message")?;
        let msg = match tag {
            TAG_HELLO => Message::Hello {
                version: r.u32("version")?,
            },
            TAG_HELLO_ACK => Message::HelloAck {
                version: r.u32("version")?,
            },
            TAG_CREDIT => Message::Credit {
                bytes: r.u32("bytes")?,
            },
            TAG_DATA => Message::Data {
                bytes: r.bytes("data")?,
            },
            TAG_INPUT => Message::Input {
                bytes: r.bytes("input")?,
            },
            TAG_RESIZE => Message::Resize {
                rows: small(r.u32("rows")?, "rows")?,
                cols: small(r.u32("columns")?, "columns")?,
            },
            TAG_OUTPUT => Message::Output {
                stream: match r.u32("stream")? {
                    1 => STDOUT,
                    2 => STDERR,
                    other => {
                        return Err(ProtoError::UnknownTag {
                            what: "output stream",
                            tag: u8::try_from(other).unwrap_or(u8::MAX),
                        })
                    }
                },
                bytes: r.bytes("output")?,
            },
            0x10..=0x3f => Message::Request(Request::decode(tag, &mut r)?),
            0x40..=0x7f => Message::Response(Response::decode(tag, &mut r)?),
            tag => {
                return Err(ProtoError::UnknownTag {
                    what: "message",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// A terminal dimension, which the wire carries as a u32.
fn small(value: u32, what: &'static str) -> Result<u16, ProtoError> {
    u16::try_from(value).map_err(|_| ProtoError::Oversize {
        what,
        len: u64::from(value),
        cap: u64::from(u16::MAX),
    })
}

/// The name of the operation a request tag stands for (`None` for any other tag),
/// for routing and error messages without decoding the request.
pub fn op_name_of_tag(tag: u8) -> Option<&'static str> {
    Some(match tag {
        0x10 => "exec",
        0x11 => "read_file",
        0x12 => "write_file",
        0x13 => "dmesg",
        0x14 => "mount_vfs",
        0x15 => "shutdown",
        0x16 => "syscall",
        0x17 => "ioctl",
        0x18 => "ioctl_buf",
        0x19 => "background",
        0x1a => "job_wait",
        0x1b => "job_kill",
        0x1c => "spawn",
        0x1d => "worker_kill",
        0x1e => "quiesce",
        0x1f => "ping",
        0x20 => "cancel",
        0x21 => "session",
        _ => return None,
    })
}

impl Request {
    /// The request's tag on the wire (its first payload byte).
    pub fn tag(&self) -> u8 {
        match self {
            Request::Exec { .. } => 0x10,
            Request::ReadFile { .. } => 0x11,
            Request::WriteFile { .. } => 0x12,
            Request::Dmesg => 0x13,
            Request::MountVfs => 0x14,
            Request::Shutdown => 0x15,
            Request::Syscall { .. } => 0x16,
            Request::Ioctl { .. } => 0x17,
            Request::IoctlBuf { .. } => 0x18,
            Request::Background { .. } => 0x19,
            Request::JobWait { .. } => 0x1a,
            Request::JobKill { .. } => 0x1b,
            Request::Spawn { .. } => 0x1c,
            Request::WorkerKill { .. } => 0x1d,
            Request::Quiesce => 0x1e,
            Request::Ping => 0x1f,
            Request::Cancel { .. } => 0x20,
            Request::Session { .. } => 0x21,
        }
    }

    /// The operation's name, for error messages.
    pub fn op_name(&self) -> &'static str {
        op_name_of_tag(self.tag()).unwrap_or("request")
    }

    /// Appends the request's encoding to `out` (see [`Message::encode_after`]).
    pub fn encode_after(&self, out: Vec<u8>) -> Vec<u8> {
        self.encode(out).out
    }

    fn encode(&self, out: Vec<u8>) -> Writer {
        let mut w;
        match self {
            Request::Exec { cmd, timeout_ms } => {
                w = Writer::after(out, 0x10);
                w.str(cmd).u64(*timeout_ms);
            }
            Request::ReadFile { path } => {
                w = Writer::after(out, 0x11);
                w.str(path);
            }
            Request::WriteFile { path, size, mode } => {
                w = Writer::after(out, 0x12);
                w.str(path).u64(*size).opt_u32(*mode);
            }
            Request::Dmesg => w = Writer::after(out, 0x13),
            Request::MountVfs => w = Writer::after(out, 0x14),
            Request::Shutdown => w = Writer::after(out, 0x15),
            Request::Syscall {
                nr,
                args,
                bufs,
                ptrs,
            } => {
                w = Writer::after(out, 0x16);
                w.i64(*nr).len(args.len());
                for a in args {
                    w.u64(*a);
                }
                w.len(bufs.len());
                for b in bufs {
                    w.u32(b.arg_idx).bytes(&b.data).bool(b.output);
                }
                w.len(ptrs.len());
                for p in ptrs {
                    w.u32(p.buf_idx)
                        .u64(p.ptr_offset)
                        .u64(p.data_len)
                        .bytes(&p.data)
                        .bool(p.output);
                }
            }
            Request::Ioctl { fd, cmd, data } => {
                w = Writer::after(out, 0x17);
                w.i32(*fd).u64(*cmd).opt_bytes(data.as_deref());
            }
            Request::IoctlBuf { fd, cmd, arg, ptrs } => {
                w = Writer::after(out, 0x18);
                w.i32(*fd).u64(*cmd).bytes(arg).len(ptrs.len());
                for p in ptrs {
                    w.u64(p.ptr_offset)
                        .u64(p.buf_len)
                        .bytes(&p.data)
                        .bool(p.output);
                }
            }
            Request::Background { cmd } => {
                w = Writer::after(out, 0x19);
                w.str(cmd);
            }
            Request::JobWait { id, timeout_ms } => {
                w = Writer::after(out, 0x1a);
                w.u64(*id).u64(*timeout_ms);
            }
            Request::JobKill { id } => {
                w = Writer::after(out, 0x1b);
                w.u64(*id);
            }
            Request::Spawn { thread } => {
                w = Writer::after(out, 0x1c);
                w.bool(*thread);
            }
            Request::WorkerKill { channel } => {
                w = Writer::after(out, 0x1d);
                w.u32(*channel);
            }
            Request::Quiesce => w = Writer::after(out, 0x1e),
            Request::Ping => w = Writer::after(out, 0x1f),
            Request::Cancel { seq } => {
                w = Writer::after(out, 0x20);
                w.u32(*seq);
            }
            Request::Session { command, pty, term } => {
                w = Writer::after(out, 0x21);
                w.str(command).bool(pty.is_some());
                if let Some(size) = pty {
                    w.u32(u32::from(size.rows)).u32(u32::from(size.cols));
                }
                w.str(term);
            }
        }
        w
    }

    fn decode(tag: u8, r: &mut Reader<'_>) -> Result<Request, ProtoError> {
        Ok(match tag {
            0x10 => Request::Exec {
                cmd: r.string("command")?,
                timeout_ms: r.u64("timeout_ms")?,
            },
            0x11 => Request::ReadFile {
                path: r.string("path")?,
            },
            0x12 => Request::WriteFile {
                path: r.string("path")?,
                size: r.u64("file size")?,
                mode: r.opt_u32("mode")?,
            },
            0x13 => Request::Dmesg,
            0x14 => Request::MountVfs,
            0x15 => Request::Shutdown,
            0x16 => {
                let nr = r.i64("syscall number")?;
                let n = r.count("syscall args", 8)?;
                let mut args = Vec::with_capacity(n);
                for _ in 0..n {
                    args.push(r.u64("syscall arg")?);
                }
                let n = r.count("syscall buffers", 9)?;
                let mut bufs = Vec::with_capacity(n);
                for _ in 0..n {
                    bufs.push(SyscallBuf {
                        arg_idx: r.u32("buffer index")?,
                        data: r.bytes("buffer data")?,
                        output: r.bool("buffer output flag")?,
                    });
                }
                let n = r.count("pointer patches", 25)?;
                let mut ptrs = Vec::with_capacity(n);
                for _ in 0..n {
                    ptrs.push(PtrPatch {
                        buf_idx: r.u32("pointer buffer index")?,
                        ptr_offset: r.u64("pointer offset")?,
                        data_len: r.u64("pointer data length")?,
                        data: r.bytes("pointer data")?,
                        output: r.bool("pointer output flag")?,
                    });
                }
                Request::Syscall {
                    nr,
                    args,
                    bufs,
                    ptrs,
                }
            }
            0x17 => Request::Ioctl {
                fd: r.i32("fd")?,
                cmd: r.u64("ioctl cmd")?,
                data: r.opt_bytes("ioctl data")?,
            },
            0x18 => {
                let fd = r.i32("fd")?;
                let cmd = r.u64("ioctl cmd")?;
                let arg = r.bytes("ioctl struct")?;
                let n = r.count("ioctl pointers", 21)?;
                let mut ptrs = Vec::with_capacity(n);
                for _ in 0..n {
                    ptrs.push(IoctlPtr {
                        ptr_offset: r.u64("pointer offset")?,
                        buf_len: r.u64("pointer buffer length")?,
                        data: r.bytes("pointer data")?,
                        output: r.bool("pointer output flag")?,
                    });
                }
                Request::IoctlBuf { fd, cmd, arg, ptrs }
            }
            0x19 => Request::Background {
                cmd: r.string("command")?,
            },
            0x1a => Request::JobWait {
                id: r.u64("job id")?,
                timeout_ms: r.u64("timeout")?,
            },
            0x1b => Request::JobKill {
                id: r.u64("job id")?,
            },
            0x1c => Request::Spawn {
                thread: r.bool("thread flag")?,
            },
            0x1d => Request::WorkerKill {
                channel: r.u32("channel")?,
            },
            0x1e => Request::Quiesce,
            0x1f => Request::Ping,
            0x20 => Request::Cancel {
                seq: r.u32("cancelled seq")?,
            },
            0x21 => {
                let command = r.string("command")?;
                let pty = if r.bool("pty flag")? {
                    Some(PtySize {
                        rows: small(r.u32("rows")?, "rows")?,
                        cols: small(r.u32("columns")?, "columns")?,
                    })
                } else {
                    None
                };
                Request::Session {
                    command,
                    pty,
                    term: r.string("term")?,
                }
            }
            tag => {
                return Err(ProtoError::UnknownTag {
                    what: "request",
                    tag,
                })
            }
        })
    }
}

impl Response {
    fn encode(&self, out: Vec<u8>) -> Writer {
        let mut w;
        match self {
            Response::Exec {
                exit_code,
                stdout,
                stderr,
            } => {
                w = Writer::after(out, 0x40);
                w.i32(*exit_code).bytes(stdout).bytes(stderr);
            }
            Response::File { size } => {
                w = Writer::after(out, 0x41);
                w.u64(*size);
            }
            Response::Done => w = Writer::after(out, 0x42),
            Response::Dmesg { log } => {
                w = Writer::after(out, 0x43);
                w.bytes(log);
            }
            Response::Syscall { ret, bufs, outputs } => {
                w = Writer::after(out, 0x44);
                w.i64(*ret).len(bufs.len());
                for b in bufs {
                    w.bytes(b);
                }
                w.len(outputs.len());
                for o in outputs {
                    w.bytes(o);
                }
            }
            Response::Ioctl { ret, data } => {
                w = Writer::after(out, 0x45);
                w.i64(*ret).opt_bytes(data.as_deref());
            }
            Response::Job { id, pid } => {
                w = Writer::after(out, 0x46);
                w.u64(*id).i32(*pid);
            }
            Response::JobStatus {
                running,
                exit_code,
                stdout,
                stderr,
            } => {
                w = Writer::after(out, 0x47);
                w.bool(*running).i32(*exit_code).bytes(stdout).bytes(stderr);
            }
            Response::Spawned { channel, pid } => {
                w = Writer::after(out, 0x48);
                w.u32(*channel).i32(*pid);
            }
            Response::Quiesced => w = Writer::after(out, 0x49),
            Response::Pong => w = Writer::after(out, 0x4a),
            Response::SessionEnded { exit_code } => {
                w = Writer::after(out, 0x4b);
                w.i32(*exit_code);
            }
            Response::Error(e) => {
                w = Writer::after(out, 0x7f);
                e.encode(&mut w);
            }
        }
        w
    }

    fn decode(tag: u8, r: &mut Reader<'_>) -> Result<Response, ProtoError> {
        Ok(match tag {
            0x40 => Response::Exec {
                exit_code: r.i32("exit code")?,
                stdout: r.bytes("stdout")?,
                stderr: r.bytes("stderr")?,
            },
            0x41 => Response::File {
                size: r.u64("file size")?,
            },
            0x42 => Response::Done,
            0x43 => Response::Dmesg {
                log: r.bytes("kernel log")?,
            },
            0x44 => {
                let ret = r.i64("syscall result")?;
                let n = r.count("result buffers", 4)?;
                let mut bufs = Vec::with_capacity(n);
                for _ in 0..n {
                    bufs.push(r.bytes("result buffer")?);
                }
                let n = r.count("output buffers", 4)?;
                let mut outputs = Vec::with_capacity(n);
                for _ in 0..n {
                    outputs.push(r.bytes("output buffer")?);
                }
                Response::Syscall { ret, bufs, outputs }
            }
            0x45 => Response::Ioctl {
                ret: r.i64("ioctl result")?,
                data: r.opt_bytes("ioctl data")?,
            },
            0x46 => Response::Job {
                id: r.u64("job id")?,
                pid: r.i32("pid")?,
            },
            0x47 => Response::JobStatus {
                running: r.bool("running flag")?,
                exit_code: r.i32("exit code")?,
                stdout: r.bytes("stdout")?,
                stderr: r.bytes("stderr")?,
            },
            0x48 => Response::Spawned {
                channel: r.u32("channel")?,
                pid: r.i32("pid")?,
            },
            0x49 => Response::Quiesced,
            0x4a => Response::Pong,
            0x4b => Response::SessionEnded {
                exit_code: r.i32("exit code")?,
            },
            0x7f => Response::Error(AgentError::decode(r)?),
            tag => {
                return Err(ProtoError::UnknownTag {
                    what: "response",
                    tag,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Message> {
        let reqs = vec![
            Request::Exec {
                cmd: "echo hi; exit 3".into(),
                timeout_ms: 5000,
            },
            Request::ReadFile {
                path: "/etc/passwd".into(),
            },
            Request::WriteFile {
                path: "/tmp/x".into(),
                size: 16 << 20,
                mode: Some(0o755),
            },
            Request::WriteFile {
                path: "/tmp/y".into(),
                size: 0,
                mode: None,
            },
            Request::Dmesg,
            Request::MountVfs,
            Request::Shutdown,
            Request::Syscall {
                nr: 39,
                args: vec![],
                bufs: vec![],
                ptrs: vec![],
            },
            Request::Syscall {
                nr: -1,
                args: vec![u64::MAX, 0, 1 << 63, 4, 5, 6],
                bufs: vec![
                    SyscallBuf {
                        arg_idx: 1,
                        data: b"abc".to_vec(),
                        output: true,
                    },
                    SyscallBuf {
                        arg_idx: 3,
                        data: vec![],
                        output: false,
                    },
                ],
                ptrs: vec![PtrPatch {
                    buf_idx: 1,
                    ptr_offset: 8,
                    data_len: 64,
                    data: vec![7; 3],
                    output: true,
                }],
            },
            Request::Ioctl {
                fd: 3,
                cmd: 0x541b,
                data: Some(vec![0; 4]),
            },
            Request::Ioctl {
                fd: -1,
                cmd: u64::MAX,
                data: None,
            },
            Request::IoctlBuf {
                fd: 4,
                cmd: 0xc018_0000,
                arg: vec![0; 24],
                ptrs: vec![IoctlPtr {
                    ptr_offset: 8,
                    buf_len: 16,
                    data: b"x".to_vec(),
                    output: false,
                }],
            },
            Request::Background {
                cmd: "sleep 10".into(),
            },
            Request::JobWait {
                id: 7,
                timeout_ms: 1500,
            },
            Request::JobKill { id: u64::MAX },
            Request::Spawn { thread: true },
            Request::Spawn { thread: false },
            Request::WorkerKill { channel: 9 },
            Request::Quiesce,
            Request::Ping,
            Request::Cancel { seq: 7 },
            Request::Session {
                command: "exec /bin/sh -l".into(),
                pty: Some(PtySize { rows: 24, cols: 80 }),
                term: "xterm-256color".into(),
            },
            Request::Session {
                command: "uname -r".into(),
                pty: None,
                term: String::new(),
            },
        ];
        let errors = vec![
            AgentError::Path {
                op: "open".into(),
                path: "/nope".into(),
                errno: 2,
            },
            AgentError::Os {
                op: "fork".into(),
                errno: 12,
            },
            AgentError::OutputTooLarge {
                cmd: "yes".into(),
                cap: 16 << 20,
            },
            AgentError::FileTooLarge {
                path: "/big".into(),
                cap: 16 << 20,
            },
            AgentError::InvalidRequest {
                op: "syscall".into(),
                reason: "7 arguments".into(),
            },
            AgentError::UnknownJob { id: 3 },
            AgentError::UnknownChannel { channel: 4 },
            AgentError::WorkerGone {
                channel: 5,
                reason: "killed".into(),
            },
            AgentError::Unsupported {
                op: "spawn".into(),
                reason: "inside a worker".into(),
            },
            AgentError::NoHandshake,
            AgentError::CommandTimedOut {
                cmd: "sleep 9".into(),
                after_ms: 5000,
            },
        ];
        let mut resps = vec![
            Response::Exec {
                exit_code: 130,
                stdout: b"out".to_vec(),
                stderr: vec![0xff, 0],
            },
            Response::File { size: 1 << 40 },
            Response::Done,
            Response::Dmesg {
                log: b"[0.0] Linux\n".to_vec(),
            },
            Response::Syscall {
                ret: -2,
                bufs: vec![vec![1], vec![]],
                outputs: vec![vec![9; 9]],
            },
            Response::Ioctl {
                ret: 0,
                data: Some(vec![4, 0, 0, 0]),
            },
            Response::Ioctl {
                ret: -25,
                data: None,
            },
            Response::Job { id: 1, pid: 4242 },
            Response::JobStatus {
                running: true,
                exit_code: -1,
                stdout: vec![],
                stderr: b"e".to_vec(),
            },
            Response::Spawned {
                channel: 1,
                pid: 77,
            },
            Response::Quiesced,
            Response::Pong,
            Response::SessionEnded { exit_code: 130 },
        ];
        resps.extend(errors.into_iter().map(Response::Error));
        let mut msgs = vec![
            Message::Hello { version: 1 },
            Message::HelloAck { version: u32::MAX },
            Message::Credit { bytes: 4096 },
            Message::Data {
                bytes: (0..=255).collect(),
            },
            Message::Data { bytes: vec![] },
            Message::Input {
                bytes: b"ls\r".to_vec(),
            },
            Message::Input { bytes: vec![] },
            Message::Resize {
                rows: 50,
                cols: 132,
            },
            Message::Output {
                stream: STDOUT,
                bytes: b"$ ".to_vec(),
            },
            Message::Output {
                stream: STDERR,
                bytes: vec![0, 255],
            },
        ];
        msgs.extend(reqs.into_iter().map(Message::Request));
        msgs.extend(resps.into_iter().map(Message::Response));
        msgs
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), m, "bytes {bytes:02x?}");
        }
    }

    #[test]
    fn every_request_starts_with_its_tag_and_is_named_by_it() {
        for m in all_messages() {
            if let Message::Request(req) = &m {
                assert_eq!(m.encode()[0], req.tag(), "{m:?}");
                assert_eq!(op_name_of_tag(req.tag()), Some(req.op_name()));
            }
        }
        assert_eq!(op_name_of_tag(0x22), None);
        assert_eq!(op_name_of_tag(TAG_DATA), None);
        assert_eq!(op_name_of_tag(TAG_INPUT), None);
        assert_eq!(op_name_of_tag(TAG_OUTPUT), None);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for m in all_messages() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..cut]).is_err(),
                    "{m:?} decoded from {cut} of {} bytes",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_refused() {
        let mut bytes = Message::Request(Request::Ping).encode();
        bytes.push(0);
        assert_eq!(
            Message::decode(&bytes),
            Err(ProtoError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn huge_counts_refused_before_allocating() {
        // A Syscall claiming 2^32-1 arguments with 4 bytes of input.
        let mut bytes = vec![0x16];
        bytes.extend_from_slice(&39i64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        match Message::decode(&bytes) {
            Err(ProtoError::Truncated { what, .. }) => assert_eq!(what, "syscall args"),
            other => panic!("expected truncation, got {other:?}"),
        }
        // A byte string claiming 4 GiB.
        let mut bytes = vec![0x11];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(&bytes),
            Err(ProtoError::Truncated { .. })
        ));
    }

    #[test]
    fn unknown_tags_named() {
        assert_eq!(
            Message::decode(&[0x3e]),
            Err(ProtoError::UnknownTag {
                what: "request",
                tag: 0x3e
            })
        );
        assert_eq!(
            Message::decode(&[0x00]),
            Err(ProtoError::UnknownTag {
                what: "message",
                tag: 0
            })
        );
        assert_eq!(
            Message::decode(&[0x1c, 2]),
            Err(ProtoError::UnknownTag {
                what: "thread flag",
                tag: 2
            })
        );
    }

    #[test]
    fn invalid_utf8_named() {
        let mut bytes = vec![0x11];
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(
            Message::decode(&bytes),
            Err(ProtoError::InvalidUtf8 { what: "path" })
        );
    }

    #[test]
    fn errors_name_subject_and_errno() {
        let e = AgentError::Path {
            op: "open".into(),
            path: "/nope".into(),
            errno: 2,
        };
        assert_eq!(e.to_string(), "open /nope: ENOENT (errno 2)");
        assert_eq!(e.errno(), Some(2));
        let e = AgentError::OutputTooLarge {
            cmd: "yes".into(),
            cap: 16,
        };
        assert!(e.to_string().contains("cap of 16 bytes"), "{e}");
        let e = AgentError::FileTooLarge {
            path: "/big".into(),
            cap: 16 << 20,
        };
        assert_eq!(
            e.to_string(),
            "file /big exceeds the cap of 16777216 bytes (16 MiB)"
        );
    }
}
