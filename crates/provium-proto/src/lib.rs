//! Wire protocol between the Provium host and its guest agent: frames, the handshake,
//! the request/response/error enums and their hand-written little-endian encoding.
//!
//! The layout is described in `docs/protocol.md`; `frame::tests::pinned_*` fail when
//! it changes.

pub mod error;
pub mod frame;
pub mod message;
mod wire;

pub use error::{errno_name, AgentError, ProtoError};
pub use frame::{
    encode_frame, encode_message, encode_request, seal_frame, Frame, FrameReader, FRAME_HEADER_LEN,
    MAGIC,
};
pub use message::{IoctlPtr, Message, PtrPatch, Request, Response, SyscallBuf, MAX_SYSCALL_ARGS};

/// Protocol version exchanged in `Hello`/`HelloAck`. Bump on any change to the message
/// encoding; the frame header and the handshake messages never change.
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest frame payload accepted by either side. Leaves room around [`MAX_DATA`] for
/// the message's own fields (tag, lengths, a path).
pub const MAX_PAYLOAD: u32 = MAX_DATA + 64 * 1024;

/// Largest user data carried by one message: a file's contents, or a command's
/// stdout and stderr together.
pub const MAX_DATA: u32 = 16 * 1024 * 1024;

/// The channel of the agent's main process; workers get higher ids.
pub const MAIN_CHANNEL: u32 = 0;

/// The agent prints this phrase on the guest console, followed by how the process
/// ended, when its serving process dies (e.g. a test's `exit_group`): the channel
/// itself stays open on the host side, so the console is how the host learns that
/// nothing will answer any more.
pub const AGENT_ENDED: &str = "the serving agent ended: ";
