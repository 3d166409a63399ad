//! The two error types of the protocol: `ProtoError` (bytes that do not decode) and
//! `AgentError` (an operation the agent could not perform, sent back as a response).

use std::fmt;

use crate::wire::{Reader, Writer};

/// Bytes on the channel that are not a valid frame or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The input ended inside a field.
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    /// A frame or message announced more than the payload cap.
    Oversize {
        what: &'static str,
        len: u64,
        cap: u64,
    },
    /// A tag byte names no known variant.
    UnknownTag { what: &'static str, tag: u8 },
    /// A text field is not UTF-8.
    InvalidUtf8 { what: &'static str },
    /// A message decoded completely but bytes were left over.
    TrailingBytes { extra: u64 },
    /// A frame's payload does not match its checksum. `older` when it matches the
    /// checksum of protocol 4 and older instead: the sender is of an older version.
    PayloadChecksum { channel: u32, seq: u32, older: bool },
}

/// The last protocol version whose payloads carry byte-wise FNV-1a checksums.
pub const LAST_FNV_PROTOCOL: u32 = 4;

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Truncated { what, need, have } => {
                write!(f, "truncated {what}: need {need} bytes, have {have}")
            }
            ProtoError::Oversize { what, len, cap } => {
                write!(f, "{what} of {len} bytes exceeds the cap of {cap} bytes")
            }
            ProtoError::UnknownTag { what, tag } => write!(f, "unknown {what} tag 0x{tag:02x}"),
            ProtoError::InvalidUtf8 { what } => write!(f, "{what} is not valid UTF-8"),
            ProtoError::TrailingBytes { extra } => {
                write!(f, "{extra} unexpected bytes after the message")
            }
            ProtoError::PayloadChecksum {
                channel,
                seq,
                older,
            } => {
                write!(
                    f,
                    "payload checksum mismatch (channel {channel}, seq {seq})"
                )?;
                if *older {
                    write!(
                        f,
                        "; it is checksummed as protocol {LAST_FNV_PROTOCOL} and older did: the sender speaks an older protocol"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ProtoError {}

/// Why the agent could not perform a request. Every variant names its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// A file-system operation on a guest path failed.
    Path {
        op: String,
        path: String,
        errno: i32,
    },
    /// A system call without a path subject failed (fork, pipe, klogctl, ...).
    Os { op: String, errno: i32 },
    /// A command produced more output than one response may carry.
    OutputTooLarge { cmd: String, cap: u64 },
    /// A file is larger than one response may carry.
    FileTooLarge { path: String, cap: u64 },
    /// The request is malformed for its operation (bad buffer index, offset, ...).
    InvalidRequest { op: String, reason: String },
    /// No background job has this id on this channel.
    UnknownJob { id: u64 },
    /// No worker was ever spawned with this channel id.
    UnknownChannel { channel: u32 },
    /// The worker on this channel was killed or its process died.
    WorkerGone { channel: u32, reason: String },
    /// The operation is not available here (e.g. `Spawn` inside a worker).
    Unsupported { op: String, reason: String },
    /// A request arrived before an accepted `Hello`.
    NoHandshake,
    /// A command ran past its limit; its process group was killed.
    CommandTimedOut { cmd: String, after_ms: u64 },
}

impl AgentError {
    /// The errno the error carries, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            AgentError::Path { errno, .. } | AgentError::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match self {
            AgentError::Path { op, path, errno } => {
                w.u8(1).str(op).str(path).i32(*errno);
            }
            AgentError::Os { op, errno } => {
                w.u8(2).str(op).i32(*errno);
            }
            AgentError::OutputTooLarge { cmd, cap } => {
                w.u8(3).str(cmd).u64(*cap);
            }
            AgentError::FileTooLarge { path, cap } => {
                w.u8(4).str(path).u64(*cap);
            }
            AgentError::InvalidRequest { op, reason } => {
                w.u8(5).str(op).str(reason);
            }
            AgentError::UnknownJob { id } => {
                w.u8(6).u64(*id);
            }
            AgentError::UnknownChannel { channel } => {
                w.u8(7).u32(*channel);
            }
            AgentError::WorkerGone { channel, reason } => {
                w.u8(8).u32(*channel).str(reason);
            }
            AgentError::Unsupported { op, reason } => {
                w.u8(9).str(op).str(reason);
            }
            AgentError::NoHandshake => {
                w.u8(10);
            }
            AgentError::CommandTimedOut { cmd, after_ms } => {
                w.u8(11).str(cmd).u64(*after_ms);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        Ok(match r.u8("error")? {
            1 => AgentError::Path {
                op: r.string("error op")?,
                path: r.string("error path")?,
                errno: r.i32("errno")?,
            },
            2 => AgentError::Os {
                op: r.string("error op")?,
                errno: r.i32("errno")?,
            },
            3 => AgentError::OutputTooLarge {
                cmd: r.string("command")?,
                cap: r.u64("cap")?,
            },
            4 => AgentError::FileTooLarge {
                path: r.string("error path")?,
                cap: r.u64("cap")?,
            },
            5 => AgentError::InvalidRequest {
                op: r.string("error op")?,
                reason: r.string("reason")?,
            },
            6 => AgentError::UnknownJob {
                id: r.u64("job id")?,
            },
            7 => AgentError::UnknownChannel {
                channel: r.u32("channel")?,
            },
            8 => AgentError::WorkerGone {
                channel: r.u32("channel")?,
                reason: r.string("reason")?,
            },
            9 => AgentError::Unsupported {
                op: r.string("error op")?,
                reason: r.string("reason")?,
            },
            10 => AgentError::NoHandshake,
            11 => AgentError::CommandTimedOut {
                cmd: r.string("timed-out command")?,
                after_ms: r.u64("timeout")?,
            },
            tag => return Err(ProtoError::UnknownTag { what: "error", tag }),
        })
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Path { op, path, errno } => {
                write!(f, "{op} {path}: {} (errno {errno})", errno_name(*errno))
            }
            AgentError::Os { op, errno } => {
                write!(f, "{op}: {} (errno {errno})", errno_name(*errno))
            }
            AgentError::OutputTooLarge { cmd, cap } => write!(
                f,
                "output of command {cmd:?} exceeds the cap of {} (command killed)",
                size_text(*cap)
            ),
            AgentError::FileTooLarge { path, cap } => {
                write!(f, "file {path} exceeds the cap of {}", size_text(*cap))
            }
            AgentError::InvalidRequest { op, reason } => {
                write!(f, "invalid {op} request: {reason}")
            }
            AgentError::UnknownJob { id } => write!(f, "unknown background job {id}"),
            AgentError::UnknownChannel { channel } => {
                write!(f, "no worker was spawned on channel {channel}")
            }
            AgentError::WorkerGone { channel, reason } => {
                write!(f, "worker on channel {channel} is gone: {reason}")
            }
            AgentError::Unsupported { op, reason } => write!(f, "{op} is not supported: {reason}"),
            AgentError::NoHandshake => write!(f, "request received before an accepted Hello"),
            AgentError::CommandTimedOut { cmd, after_ms } => {
                write!(
                    f,
                    "command {cmd:?} ran past {after_ms} ms; its process group was killed"
                )
            }
        }
    }
}

impl std::error::Error for AgentError {}

/// `N bytes`, with the MiB figure people know the caps by when it is whole.
fn size_text(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{bytes} bytes ({} MiB)", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The symbolic name of a Linux errno (x86_64 numbering), or `"errno"` if unknown.
pub fn errno_name(errno: i32) -> &'static str {
    const NAMES: [&str; 41] = [
        "0",
        "EPERM",
        "ENOENT",
        "ESRCH",
        "EINTR",
        "EIO",
        "ENXIO",
        "E2BIG",
        "ENOEXEC",
        "EBADF",
        "ECHILD",
        "EAGAIN",
        "ENOMEM",
        "EACCES",
        "EFAULT",
        "ENOTBLK",
        "EBUSY",
        "EEXIST",
        "EXDEV",
        "ENODEV",
        "ENOTDIR",
        "EISDIR",
        "EINVAL",
        "ENFILE",
        "EMFILE",
        "ENOTTY",
        "ETXTBSY",
        "EFBIG",
        "ENOSPC",
        "ESPIPE",
        "EROFS",
        "EMLINK",
        "EPIPE",
        "EDOM",
        "ERANGE",
        "EDEADLK",
        "ENAMETOOLONG",
        "ENOLCK",
        "ENOSYS",
        "ENOTEMPTY",
        "ELOOP",
    ];
    match errno {
        0..=40 => NAMES[errno as usize],
        61 => "ENODATA",
        62 => "ETIME",
        75 => "EOVERFLOW",
        95 => "EOPNOTSUPP",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        _ => "errno",
    }
}
