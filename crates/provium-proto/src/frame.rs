//! Framing: a fixed 24-byte header (magic, channel, sequence, length, two checksums)
//! in front of each message, and an incremental reader that resynchronises on the
//! magic after garbage.

use crate::error::ProtoError;
use crate::message::Message;
use crate::MAX_PAYLOAD;

/// The resync marker opening every frame.
pub const MAGIC: [u8; 4] = *b"PRVM";

/// Header size: magic, channel, seq, payload length, payload checksum, header checksum.
pub const FRAME_HEADER_LEN: usize = 24;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub channel: u32,
    /// Chosen by the sender of a request and echoed by its response, so a late
    /// answer to an abandoned call is never taken for the answer to the next one.
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn message(&self) -> Result<Message, ProtoError> {
        Message::decode(&self.payload)
    }
}

/// FNV-1a, 32 bits: cheap, dependency-free, and enough to tell a real header from
/// stale bytes that happen to contain the magic.
fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Encodes one frame; refuses payloads above [`MAX_PAYLOAD`].
pub fn encode_frame(channel: u32, seq: u32, payload: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or(ProtoError::Oversize {
            what: "frame payload",
            len: payload.len() as u64,
            cap: u64::from(MAX_PAYLOAD),
        })?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&channel.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&fnv1a(payload).to_le_bytes());
    let header_sum = fnv1a(&out);
    out.extend_from_slice(&header_sum.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encodes `msg` as one frame.
pub fn encode_message(channel: u32, seq: u32, msg: &Message) -> Result<Vec<u8>, ProtoError> {
    encode_frame(channel, seq, &msg.encode())
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Incremental frame decoder: feed it bytes as they arrive, take frames out.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    skipped: u64,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes discarded so far while looking for a frame.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Drops everything buffered (a new connection starts clean).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn skip(&mut self, n: usize) {
        self.start += n;
        self.skipped += n as u64;
    }

    /// The next complete frame, `None` if more bytes are needed. Garbage before a
    /// valid header is skipped. An oversize length or a payload checksum mismatch is
    /// reported once and the offending bytes are dropped, so the caller may go on.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        loop {
            let avail = &self.buf[self.start..];
            match avail.windows(MAGIC.len()).position(|w| w == MAGIC) {
                Some(pos) => self.skip(pos),
                None => {
                    // Keep a tail that may be the beginning of a magic.
                    let keep = avail.len().min(MAGIC.len() - 1);
                    self.skip(avail.len() - keep);
                    return Ok(None);
                }
            }
            let avail = &self.buf[self.start..];
            if avail.len() < FRAME_HEADER_LEN {
                return Ok(None);
            }
            let header = &avail[..FRAME_HEADER_LEN];
            if fnv1a(&header[..20]) != le32(&header[20..24]) {
                // The magic appeared inside garbage: look for the next one.
                self.skip(1);
                continue;
            }
            let channel = le32(&header[4..8]);
            let seq = le32(&header[8..12]);
            let len = le32(&header[12..16]);
            let payload_sum = le32(&header[16..20]);
            if len > MAX_PAYLOAD {
                self.skip(FRAME_HEADER_LEN);
                return Err(ProtoError::Oversize {
                    what: "frame payload",
                    len: u64::from(len),
                    cap: u64::from(MAX_PAYLOAD),
                });
            }
            let total = FRAME_HEADER_LEN + len as usize;
            if avail.len() < total {
                return Ok(None);
            }
            let payload = avail[FRAME_HEADER_LEN..total].to_vec();
            self.start += total;
            if fnv1a(&payload) != payload_sum {
                self.skipped += total as u64;
                return Err(ProtoError::PayloadChecksum { channel, seq });
            }
            return Ok(Some(Frame {
                channel,
                seq,
                payload,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Request;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn pinned_hello_frame() {
        let f = encode_message(0, 1, &Message::Hello { version: 1 }).unwrap();
        assert_eq!(
            hex(&f),
            "5052564d0000000001000000050000005dc7951b32e59ea90101000000",
        );
    }

    #[test]
    fn pinned_exec_frame() {
        let msg = Message::Request(Request::Exec {
            cmd: "id".into(),
            timeout_ms: 0,
        });
        let f = encode_message(3, 7, &msg).unwrap();
        assert_eq!(
            hex(&f),
            "5052564d03000000070000000f00000068eb85ca8f71577e100200000069640000000000000000",
        );
    }

    #[test]
    fn pinned_credit_frame() {
        let msg = Message::Credit { bytes: 4096 };
        assert_eq!(hex(&msg.encode()), "0300100000");
        let f = encode_message(0, 0, &msg).unwrap();
        assert_eq!(
            Frame::message(&{
                let mut r = FrameReader::new();
                r.push(&f);
                r.next_frame().unwrap().unwrap()
            })
            .unwrap(),
            msg
        );
    }

    #[test]
    fn pinned_syscall_payload() {
        let msg = Message::Request(Request::Syscall {
            nr: 39,
            args: vec![1],
            bufs: vec![crate::SyscallBuf {
                arg_idx: 1,
                data: vec![0xaa],
            }],
            ptrs: vec![crate::PtrPatch {
                buf_idx: 1,
                ptr_offset: 0,
                data_len: 2,
                data: vec![],
                output: true,
            }],
        });
        assert_eq!(
            hex(&msg.encode()),
            concat!(
                "16",
                "2700000000000000",
                "01000000",
                "0100000000000000",
                "01000000",
                "01000000",
                "01000000",
                "aa",
                "01000000",
                "01000000",
                "0000000000000000",
                "0200000000000000",
                "00000000",
                "01",
            )
        );
    }

    #[test]
    fn reads_frames_split_at_every_byte() {
        let a = encode_message(0, 1, &Message::Hello { version: 1 }).unwrap();
        let b = encode_message(5, 2, &Message::HelloAck { version: 9 }).unwrap();
        let all = [a, b].concat();
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        for byte in &all {
            r.push(std::slice::from_ref(byte));
            while let Some(f) = r.next_frame().unwrap() {
                got.push((f.channel, f.seq, f.message().unwrap()));
            }
        }
        assert_eq!(
            got,
            vec![
                (0, 1, Message::Hello { version: 1 }),
                (5, 2, Message::HelloAck { version: 9 })
            ]
        );
        assert_eq!(r.skipped(), 0);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn garbage_before_marker_is_skipped() {
        let frame = encode_message(0, 4, &Message::Hello { version: 1 }).unwrap();
        // Garbage includes a false magic followed by an invalid header.
        let mut garbage = b"\x00\xffnoise PRVM\x01\x02\x03 more noise PRV".to_vec();
        garbage.extend_from_slice(&[0u8; 30]);
        let mut r = FrameReader::new();
        r.push(&garbage);
        assert_eq!(r.next_frame().unwrap(), None);
        r.push(&frame);
        let f = r.next_frame().unwrap().expect("frame after garbage");
        assert_eq!(f.message().unwrap(), Message::Hello { version: 1 });
        assert_eq!(f.seq, 4);
        assert_eq!(r.skipped(), garbage.len() as u64);
    }

    #[test]
    fn oversize_length_refused_from_header_alone() {
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        let sum = fnv1a(&header);
        header.extend_from_slice(&sum.to_le_bytes());
        let mut r = FrameReader::new();
        r.push(&header);
        match r.next_frame() {
            Err(ProtoError::Oversize { len, cap, .. }) => {
                assert_eq!(len, u64::from(MAX_PAYLOAD) + 1);
                assert_eq!(cap, u64::from(MAX_PAYLOAD));
            }
            other => panic!("expected oversize, got {other:?}"),
        }
        // The reader recovers: a following good frame still decodes.
        r.push(&encode_message(0, 1, &Message::Hello { version: 1 }).unwrap());
        assert!(r.next_frame().unwrap().is_some());
    }

    #[test]
    fn encode_refuses_oversize_payload() {
        let payload = vec![0u8; MAX_PAYLOAD as usize + 1];
        assert!(matches!(
            encode_frame(0, 0, &payload),
            Err(ProtoError::Oversize { .. })
        ));
    }

    #[test]
    fn payload_corruption_detected_and_skipped() {
        let mut f = encode_message(2, 3, &Message::Request(Request::Ping)).unwrap();
        let last = f.len() - 1;
        f[last] ^= 0xff;
        f.extend(encode_message(2, 4, &Message::Request(Request::Ping)).unwrap());
        let mut r = FrameReader::new();
        r.push(&f);
        assert_eq!(
            r.next_frame(),
            Err(ProtoError::PayloadChecksum { channel: 2, seq: 3 })
        );
        assert_eq!(r.next_frame().unwrap().unwrap().seq, 4);
    }
}
