//! Wire protocol between the Provium host and its guest agent: frames, the handshake,
//! the request/response/error enums and their hand-written little-endian encoding.
//!
//! The layout is described in `docs/protocol.md`; `frame::tests::pinned_*` fail when
//! it changes.

pub mod error;
pub mod frame;
pub mod message;
mod wire;

pub use error::{errno_name, AgentError, ProtoError, LAST_FNV_PROTOCOL};
pub use frame::{
    encode_data_frame, encode_frame, encode_message, encode_request, seal_data_frame, seal_frame,
    Frame, FrameReader, DATA_FRAME_PREFIX, FRAME_HEADER_LEN, MAGIC,
};
pub use message::{
    is_partial_answer, op_name_of_tag, IoctlPtr, Message, PtrPatch, PtySize, Request, Response,
    SyscallBuf, MAX_SYSCALL_ARGS, STDERR, STDOUT, TAG_DATA, TAG_INPUT, TAG_OUTPUT, TAG_RESIZE,
};

/// Protocol version exchanged in `Hello`/`HelloAck`. Bump on any change to the message
/// encoding; the frame header's layout, its checksum and the handshake messages
/// never change. Version 5 changed the payload checksum (byte-wise FNV-1a before);
/// a reader still recognises the old one and says the sender is older.
pub const PROTOCOL_VERSION: u32 = 5;

/// Largest frame payload accepted by either side. Leaves room around [`MAX_DATA`] for
/// the message's own fields (tag, lengths, a path).
pub const MAX_PAYLOAD: u32 = MAX_DATA + 64 * 1024;

/// Largest user data carried by one message: a file's contents, or a command's
/// stdout and stderr together.
pub const MAX_DATA: u32 = 16 * 1024 * 1024;

/// How much data one `Data` message carries at most, as both sides send them: small
/// enough that the receiver works on one chunk while the next is on the wire and that
/// other channels' frames pass between chunks, large enough that the per-frame cost
/// (a header, a wake-up, a write call) stays small.
pub const DATA_CHUNK: usize = 256 * 1024;

/// `DATA_CHUNK` on the ttyS1 fallback, where a frame takes its length divided by
/// about 0.3 MB/s to cross: smaller, so the frames of other channels and the agent's
/// credits are not held back for long behind one chunk.
pub const UART_DATA_CHUNK: usize = 32 * 1024;

/// The channel of the agent's main process; workers get higher ids.
pub const MAIN_CHANNEL: u32 = 0;

/// The agent prints this phrase on the guest console, followed by how the process
/// ended, when its serving process dies (e.g. a test's `exit_group`): the channel
/// itself stays open on the host side, so the console is how the host learns that
/// nothing will answer any more.
pub const AGENT_ENDED: &str = "the serving agent ended: ";
