//! Framing: a fixed 24-byte header (magic, channel, sequence, length, two checksums)
//! in front of each message, and an incremental reader that resynchronises on the
//! magic after garbage.

use std::io::Read;

use crate::error::ProtoError;
use crate::message::{Message, Request, TAG_DATA};
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

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a, 32 bits: the header checksum. Cheap, dependency-free, and enough to tell a
/// real header from stale bytes that happen to contain the magic; it never changes
/// between protocol versions, so any two versions still find each other's frames
/// (and can say their versions differ). Bytes are folded in one at a time but loaded
/// eight at a time: under TCG every guest load is an emulated memory access.
fn fnv1a(data: &[u8]) -> u32 {
    let mut h = FNV_OFFSET;
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        let mut w = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        for _ in 0..8 {
            h = (h ^ (w & 0xff) as u32).wrapping_mul(FNV_PRIME);
            w >>= 8;
        }
    }
    for &b in words.remainder() {
        h = (h ^ u32::from(b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// The payload checksum (protocol 5): eight bytes per step, each step a rotate, an
/// exclusive or and a 64-bit multiply (the word hash rustc's `FxHasher` uses), then
/// the length, folded to 32 bits. Byte-wise FNV-1a spent a multiply per byte, and
/// under TCG that pass was a large part of a transfer's time in the guest, which
/// checks or makes one for every byte it receives or sends. It is an integrity check
/// against bytes lost or garbled on the way (the UART), not against anyone forging
/// them: the channel is the VM's own.
pub fn payload_checksum(data: &[u8]) -> u32 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        h = step(
            h,
            u64::from_le_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]),
        );
    }
    let mut tail = [0u8; 8];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = step(h, u64::from_le_bytes(tail));
    // The length tells a payload from the same bytes with zeros appended.
    h = step(h, data.len() as u64);
    (h ^ (h >> 32)) as u32
}

/// Fills in the header at the start of `frame` for the payload after it: the one
/// pass over the payload a sender makes. `frame` holds [`FRAME_HEADER_LEN`] bytes
/// (overwritten) and then the payload.
pub fn seal_frame(frame: &mut [u8], channel: u32, seq: u32) -> Result<(), ProtoError> {
    let payload_len = frame.len().saturating_sub(FRAME_HEADER_LEN);
    let len = u32::try_from(payload_len)
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD && frame.len() >= FRAME_HEADER_LEN)
        .ok_or(ProtoError::Oversize {
            what: "frame payload",
            len: payload_len as u64,
            cap: u64::from(MAX_PAYLOAD),
        })?;
    let payload_sum = payload_checksum(&frame[FRAME_HEADER_LEN..]);
    let header = &mut frame[..FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4..8].copy_from_slice(&channel.to_le_bytes());
    header[8..12].copy_from_slice(&seq.to_le_bytes());
    header[12..16].copy_from_slice(&len.to_le_bytes());
    header[16..20].copy_from_slice(&payload_sum.to_le_bytes());
    let header_sum = fnv1a(&header[..20]);
    header[20..24].copy_from_slice(&header_sum.to_le_bytes());
    Ok(())
}

/// Encodes one frame; refuses payloads above [`MAX_PAYLOAD`].
pub fn encode_frame(channel: u32, seq: u32, payload: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    out.extend_from_slice(payload);
    seal_frame(&mut out, channel, seq)?;
    Ok(out)
}

/// Encodes `msg` as one frame, writing the message once, right behind its header.
pub fn encode_message(channel: u32, seq: u32, msg: &Message) -> Result<Vec<u8>, ProtoError> {
    let mut out = msg.encode_after(vec![0; FRAME_HEADER_LEN]);
    seal_frame(&mut out, channel, seq)?;
    Ok(out)
}

/// Encodes a request as one frame, without copying the request first.
pub fn encode_request(channel: u32, seq: u32, req: &Request) -> Result<Vec<u8>, ProtoError> {
    let mut out = req.encode_after(vec![0; FRAME_HEADER_LEN]);
    seal_frame(&mut out, channel, seq)?;
    Ok(out)
}

/// Bytes in front of a `Data` message's bytes in its frame: the frame header, the
/// message tag and the data length.
pub const DATA_FRAME_PREFIX: usize = FRAME_HEADER_LEN + 5;

/// Fills in a [`Message::Data`] frame built in place: `frame` holds
/// [`DATA_FRAME_PREFIX`] bytes (overwritten), then the data, so a sender can read a
/// file straight into the frame it sends.
pub fn seal_data_frame(frame: &mut [u8], channel: u32, seq: u32) -> Result<(), ProtoError> {
    if frame.len() < DATA_FRAME_PREFIX {
        return Err(ProtoError::Truncated {
            what: "data frame",
            need: DATA_FRAME_PREFIX as u64,
            have: frame.len() as u64,
        });
    }
    let data_len = (frame.len() - DATA_FRAME_PREFIX) as u64;
    frame[FRAME_HEADER_LEN] = TAG_DATA;
    frame[FRAME_HEADER_LEN + 1..DATA_FRAME_PREFIX]
        .copy_from_slice(&u32::try_from(data_len).unwrap_or(u32::MAX).to_le_bytes());
    seal_frame(frame, channel, seq)
}

/// Encodes a [`Message::Data`] frame carrying `data`: one copy, one checksum pass.
pub fn encode_data_frame(channel: u32, seq: u32, data: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(DATA_FRAME_PREFIX + data.len());
    out.extend_from_slice(&[0; DATA_FRAME_PREFIX]);
    out.extend_from_slice(data);
    seal_data_frame(&mut out, channel, seq)?;
    Ok(out)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl Frame {
    /// The bytes of a [`Message::Data`] payload, without copying them; `None` for
    /// any other message.
    pub fn data(&self) -> Result<Option<&[u8]>, ProtoError> {
        match self.payload.first() {
            Some(&TAG_DATA) => {}
            _ => return Ok(None),
        }
        let have = self.payload.len() - 1;
        if have < 4 {
            return Err(ProtoError::Truncated {
                what: "data",
                need: 4,
                have: have as u64,
            });
        }
        let len = le32(&self.payload[1..5]) as usize;
        let rest = &self.payload[5..];
        match len.cmp(&rest.len()) {
            std::cmp::Ordering::Equal => Ok(Some(rest)),
            std::cmp::Ordering::Greater => Err(ProtoError::Truncated {
                what: "data",
                need: len as u64,
                have: rest.len() as u64,
            }),
            std::cmp::Ordering::Less => Err(ProtoError::TrailingBytes {
                extra: (rest.len() - len) as u64,
            }),
        }
    }
}

/// How much a [`FrameReader`] asks of a reader at a time when no frame in
/// progress needs more.
const READ_CHUNK: usize = 64 * 1024;
/// An emptied buffer larger than this (it held a large frame) is freed.
const SHRINK_ABOVE: usize = 1 << 20;

/// Incremental frame decoder: feed it bytes as they arrive, take frames out.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// `buf[start..end]` holds the bytes not yet returned; the rest of `buf` is
    /// space already allocated (and initialised) for the next reads.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    skipped: u64,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    /// Moves the unread bytes to the front once they no longer start near it, so
    /// the buffer does not grow with the stream.
    fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A large message once is no reason to keep its buffer for good.
            if self.buf.len() > SHRINK_ABOVE {
                self.buf = Vec::new();
            }
        } else if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Makes room for at least `n` more bytes after `end`.
    fn reserve(&mut self, n: usize) {
        self.compact();
        if self.buf.len() - self.end < n {
            self.buf.resize(self.end + n, 0);
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.reserve(data.len());
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
    }

    /// Reads once from `source` straight into the buffer (no intermediate copy),
    /// with room for more of a frame in progress; returns what `read` returned. The
    /// room grows with what has arrived (at most doubling it), not with what a
    /// header announces, so the buffer stays in proportion to the bytes received.
    pub fn read_from(&mut self, source: &mut impl Read) -> std::io::Result<usize> {
        let want = self.frame_remainder().min(self.buffered()).max(READ_CHUNK);
        self.reserve(want);
        let n = source.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Bytes still missing from the frame whose valid header starts the buffer.
    fn frame_remainder(&self) -> usize {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER_LEN || avail[..4] != MAGIC {
            return 0;
        }
        let header = &avail[..FRAME_HEADER_LEN];
        let len = le32(&header[12..16]);
        if len > MAX_PAYLOAD || fnv1a(&header[..20]) != le32(&header[20..24]) {
            return 0;
        }
        (FRAME_HEADER_LEN + len as usize).saturating_sub(avail.len())
    }

    /// Bytes discarded so far while looking for a frame.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Drops everything buffered (a new connection starts clean).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
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
            let avail = &self.buf[self.start..self.end];
            match avail.windows(MAGIC.len()).position(|w| w == MAGIC) {
                Some(pos) => self.skip(pos),
                None => {
                    // Keep a tail that may be the beginning of a magic.
                    let keep = avail.len().min(MAGIC.len() - 1);
                    self.skip(avail.len() - keep);
                    return Ok(None);
                }
            }
            let avail = &self.buf[self.start..self.end];
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
            let payload = &avail[FRAME_HEADER_LEN..total];
            if payload_checksum(payload) != payload_sum {
                let older = fnv1a(payload) == payload_sum;
                self.start += total;
                self.skipped += total as u64;
                return Err(ProtoError::PayloadChecksum {
                    channel,
                    seq,
                    older,
                });
            }
            let payload = payload.to_vec();
            self.start += total;
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

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn pinned_hello_frame() {
        let f = encode_message(0, 1, &Message::Hello { version: 1 }).unwrap();
        assert_eq!(
            hex(&f),
            "5052564d0000000001000000050000000e94995ee33e21310101000000",
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
            "5052564d03000000070000000f000000892998c49f1718c5100200000069640000000000000000",
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
                output: false,
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
                "00",
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
    fn pinned_data_frame() {
        let f = encode_data_frame(2, 9, b"abc").unwrap();
        assert_eq!(
            hex(&f),
            "5052564d020000000900000008000000c0c472e2ad76955f0403000000616263",
        );
        let msg = Message::Data {
            bytes: b"abc".to_vec(),
        };
        assert_eq!(f, encode_message(2, 9, &msg).unwrap());
        let ping = Request::Ping;
        assert_eq!(
            encode_request(2, 9, &ping).unwrap(),
            encode_message(2, 9, &Message::Request(ping)).unwrap()
        );
        let mut r = FrameReader::new();
        r.push(&f);
        let frame = r.next_frame().unwrap().unwrap();
        assert_eq!(frame.data().unwrap(), Some(&b"abc"[..]));
        assert_eq!(frame.message().unwrap(), msg);
    }

    #[test]
    fn pinned_transfer_payloads() {
        let write = Message::Request(Request::WriteFile {
            path: "/f".into(),
            size: 5,
            mode: Some(0o600),
        });
        assert_eq!(
            hex(&write.encode()),
            concat!(
                "12",
                "02000000",
                "2f66",
                "0500000000000000",
                "01",
                "80010000"
            )
        );
        let file = Message::Response(crate::Response::File { size: 5 });
        assert_eq!(hex(&file.encode()), "410500000000000000");
    }

    #[test]
    fn a_data_frame_sealed_in_place_equals_the_encoded_one() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut frame = vec![0xee; DATA_FRAME_PREFIX];
        frame.extend_from_slice(&data);
        seal_data_frame(&mut frame, 1, 2).unwrap();
        assert_eq!(frame, encode_data_frame(1, 2, &data).unwrap());
        assert!(seal_data_frame(&mut [0; 10], 1, 2).is_err());
    }

    #[test]
    fn data_of_other_messages_is_none_and_malformed_data_an_error() {
        let ping = Frame {
            channel: 0,
            seq: 1,
            payload: Message::Request(Request::Ping).encode(),
        };
        assert_eq!(ping.data(), Ok(None));
        for payload in [
            vec![TAG_DATA, 1],
            vec![TAG_DATA, 2, 0, 0, 0, 9],
            vec![TAG_DATA, 0, 0, 0, 0, 9],
        ] {
            let frame = Frame {
                channel: 0,
                seq: 1,
                payload,
            };
            assert!(frame.data().is_err(), "{frame:?}");
        }
    }

    #[test]
    fn the_word_wise_checksum_is_fnv1a() {
        fn bytewise(data: &[u8]) -> u32 {
            data.iter().fold(FNV_OFFSET, |h, &b| {
                (h ^ u32::from(b)).wrapping_mul(FNV_PRIME)
            })
        }
        let data: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(fnv1a(&data[..len]), bytewise(&data[..len]), "length {len}");
        }
        // The published FNV-1a 32 test vectors.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_payload_with_protocol_4s_checksum_is_named_older() {
        let mut frame = encode_message(1, 2, &Message::Hello { version: 4 }).unwrap();
        let sum = fnv1a(&frame[FRAME_HEADER_LEN..]);
        frame[16..20].copy_from_slice(&sum.to_le_bytes());
        let header_sum = fnv1a(&frame[..20]);
        frame[20..24].copy_from_slice(&header_sum.to_le_bytes());
        let mut r = FrameReader::new();
        r.push(&frame);
        let err = r.next_frame().unwrap_err();
        assert_eq!(
            err,
            ProtoError::PayloadChecksum {
                channel: 1,
                seq: 2,
                older: true
            }
        );
        assert!(err.to_string().ends_with(
            "checksummed as protocol 4 and older did: the sender speaks an older protocol"
        ));
    }

    #[test]
    fn the_payload_checksum_sees_every_byte_bit_and_the_length() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 37 + 11) as u8).collect();
        let sum = payload_checksum(&data);
        // Pinned: both sides must agree across builds.
        assert_eq!(payload_checksum(b""), 0x6459_d9fc);
        assert_eq!(payload_checksum(b"foobar"), 0x3b42_1393);
        for i in (0..data.len()).step_by(7) {
            for bit in 0..8 {
                let mut changed = data.clone();
                changed[i] ^= 1 << bit;
                assert_ne!(payload_checksum(&changed), sum, "byte {i} bit {bit}");
            }
        }
        // Two flips of the same bit in different words (which cancel in a plain
        // word-wise xor-multiply hash) are seen too.
        let mut two = data.clone();
        two[7] ^= 0x80;
        two[15] ^= 0x80;
        assert_ne!(payload_checksum(&two), sum);
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(payload_checksum(&longer), sum);
        assert_ne!(payload_checksum(&data[..999]), sum);
    }

    #[test]
    fn reading_from_a_source_sizes_the_buffer_for_the_frame_in_progress() {
        let big = encode_data_frame(0, 1, &vec![5u8; 1536 * 1024]).unwrap();
        let small = encode_message(0, 2, &Message::Request(Request::Ping)).unwrap();
        let stream = [big.clone(), small].concat();
        /// A source that returns at most 4 KiB per read, as a virtio-serial port does.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(out.len()).min(4096);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut source = Trickle(&stream);
        let mut r = FrameReader::new();
        let mut seqs = Vec::new();
        while r.read_from(&mut source).unwrap() > 0 {
            while let Some(frame) = r.next_frame().unwrap() {
                seqs.push(frame.seq);
            }
            assert!(r.buf.len() <= big.len() + READ_CHUNK, "{}", r.buf.len());
        }
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(r.buffered(), 0);
        // Emptied, the large buffer was let go before the last read.
        assert!(r.buf.len() <= READ_CHUNK, "{}", r.buf.len());
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
            Err(ProtoError::PayloadChecksum {
                channel: 2,
                seq: 3,
                older: false
            })
        );
        assert_eq!(r.next_frame().unwrap().unwrap().seq, 4);
    }
}
