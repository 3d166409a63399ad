//! Fuzz harnesses for what either side of the host–agent channel parses from bytes
//! the other side (a guest fully controls one of them) sends: frames, messages, the
//! resync scan, QEMU's QMP lines and the agent's syscall plans. Each harness checks
//! properties, not only the absence of panics. The `provium-fuzz` binary runs one
//! under cargo-afl (`scripts/fuzz`); `tests/replay.rs` runs the committed corpus
//! through them with a plain `cargo test`. See docs/protocol.md, "Fuzzing".

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod alloc;
pub mod seeds;

use provium::qmp::QmpMessage;
use provium_agent::plan::{self, SyscallPlan};
use provium_proto::{
    encode_frame, AgentError, Frame, FrameReader, IoctlPtr, Message, ProtoError, PtrPatch, Request,
    Response, SyscallBuf, FRAME_HEADER_LEN, MAGIC, MAX_DATA, MAX_PAYLOAD, MAX_SYSCALL_ARGS,
};
use serde_json::{json, Value};

/// A fuzz target: a name (its corpus folder under `fuzz/corpus/`) and its harness.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: &[Target] = &[
    ("frame", frame),
    ("request", request),
    ("response", response),
    ("resync", resync),
    ("qmp", qmp),
    ("plan", plan),
];

/// Heap a decoder may hold for `input` bytes: its fields' structs are a small
/// multiple of their encodings (a 24-byte `Vec` per 4-byte length), plus slack.
fn decode_budget(input: usize) -> usize {
    16 * input + 64 * 1024
}

/// Chunk lengths (1..=61) from a seed, so a stream is pushed in varied pieces.
fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x100;
    let mut rest = data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (state >> 16) as usize % 61).min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// The frame decoder on arbitrary bytes pushed in arbitrary chunks (the first byte
/// chooses the chunking): no panic; every frame it yields is exactly the bytes it
/// was read from; nothing it still holds could have been a complete frame; every
/// byte is accounted for as a frame, skipped, or still buffered; the heap it holds
/// stays proportional to the input.
pub fn frame(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let ((), peak) = alloc::peak_during(|| {
        let mut reader = FrameReader::new();
        let mut pushed = 0usize;
        let mut framed = 0usize;
        for chunk in chunks(seed, stream) {
            reader.push(chunk);
            pushed += chunk.len();
            loop {
                match reader.next_frame() {
                    Ok(Some(f)) => {
                        let bytes = encode_frame(f.channel, f.seq, &f.payload)
                            .expect("a decoded payload is within the cap");
                        let end = pushed - reader.buffered();
                        assert_eq!(
                            &stream[end - bytes.len()..end],
                            &bytes[..],
                            "frame does not re-encode to its bytes"
                        );
                        framed += bytes.len();
                        // What either side does next with it.
                        let _ = f.message();
                    }
                    Ok(None) => {
                        assert!(
                            reader.buffered() < FRAME_HEADER_LEN + MAX_PAYLOAD as usize,
                            "a complete frame's worth is buffered but not returned"
                        );
                        break;
                    }
                    Err(ProtoError::Oversize { .. } | ProtoError::PayloadChecksum { .. }) => {}
                    Err(other) => panic!("the frame reader reported {other:?}"),
                }
            }
        }
        assert_eq!(
            reader.skipped() as usize + framed + reader.buffered(),
            pushed,
            "bytes neither framed, skipped nor buffered"
        );
    });
    assert!(
        peak <= 4 * stream.len() + 64 * 1024,
        "the reader held {peak} bytes for {} input bytes",
        stream.len()
    );
}

/// Tags of what the host sends: the handshake (and Credit, which the agent must
/// ignore), a file's data, and requests.
fn request_tag(tag: u8) -> u8 {
    match tag {
        0x01..=0x04 | 0x10..=0x3f => tag,
        other => match other % 52 {
            n @ 0..=3 => 0x01 + n,
            n => 0x10 + (n - 4),
        },
    }
}

/// Tags of what the agent sends: responses.
fn response_tag(tag: u8) -> u8 {
    0x40 | (tag & 0x3f)
}

/// Decodes `payload` and checks the round trip: a message that decodes re-encodes
/// to exactly the same bytes (the encoding is canonical), decodes again to the same
/// value, and survives a frame. Decoding holds heap in proportion to the input.
fn round_trip(payload: &[u8]) {
    let (decoded, peak) = alloc::peak_during(|| Message::decode(payload));
    assert!(
        peak <= decode_budget(payload.len()),
        "decoding {} bytes held {peak} bytes",
        payload.len()
    );
    let Ok(msg) = decoded else { return };
    let bytes = msg.encode();
    assert_eq!(bytes, payload, "{msg:?} re-encodes differently");
    assert_eq!(Message::decode(&bytes).as_ref(), Ok(&msg));
    if let Ok(framed) = encode_frame(7, 9, &bytes) {
        let mut reader = FrameReader::new();
        reader.push(&framed);
        let f = reader
            .next_frame()
            .expect("own frame")
            .expect("whole frame");
        assert_eq!(
            f,
            Frame {
                channel: 7,
                seq: 9,
                payload: bytes
            }
        );
    }
}

/// What the agent decodes from the host (the first byte is mapped onto a handshake
/// or request tag).
pub fn request(data: &[u8]) {
    let Some((&tag, rest)) = data.split_first() else {
        return;
    };
    round_trip(&[&[request_tag(tag)], rest].concat());
}

/// What the host decodes from the guest (the first byte is mapped onto a response tag).
pub fn response(data: &[u8]) {
    let Some((&tag, rest)) = data.split_first() else {
        return;
    };
    round_trip(&[&[response_tag(tag)], rest].concat());
}

/// Reads up to `n` bytes off the front of `input`.
fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(input.len());
    let (head, tail) = input.split_at(n);
    *input = tail;
    head
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Whether a header the reader would accept (magic, then a header checksum that
/// matches) starts at `at`.
fn valid_header_at(stream: &[u8], at: usize) -> bool {
    let Some(header) = stream.get(at..at + FRAME_HEADER_LEN) else {
        return false;
    };
    header[..4] == MAGIC
        && fnv1a(&header[..20]).to_le_bytes() == [header[20], header[21], header[22], header[23]]
}

/// Garbage interleaved with valid frames, as on the ttyS1 fallback: every frame after
/// garbage is still found, in order, with nothing reported, and every garbage byte is
/// skipped. Input: a chunking seed, then records of `garbage_len, garbage,
/// channel, seq, payload_len, payload`. Garbage may hold the magic and broken
/// headers; a header that would pass its checksum is garbage no longer (it is a
/// frame, possibly cut off, the case `frame` covers), so its magic is broken first.
pub fn resync(data: &[u8]) {
    let Some((&seed, mut input)) = data.split_first() else {
        return;
    };
    let mut stream = Vec::new();
    let mut garbage = Vec::new();
    let mut expected = Vec::new();
    while !input.is_empty() {
        let n = take(&mut input, 1)[0];
        let start = stream.len();
        stream.extend_from_slice(take(&mut input, usize::from(n)));
        garbage.push(start..stream.len());
        let head = take(&mut input, 3);
        if head.len() < 3 {
            break;
        }
        let channel = u32::from(head[0]) * 0x0101;
        let seq = u32::from(head[1]) << 8;
        let payload = take(&mut input, usize::from(head[2])).to_vec();
        stream.extend(encode_frame(channel, seq, &payload).expect("small payload"));
        expected.push(Frame {
            channel,
            seq,
            payload,
        });
    }
    loop {
        let forged = garbage
            .iter()
            .flat_map(|range| range.clone())
            .find(|&at| valid_header_at(&stream, at));
        match forged {
            Some(at) => stream[at] ^= 0x20,
            None => break,
        }
    }
    let mut reader = FrameReader::new();
    let mut found = Vec::new();
    for chunk in chunks(seed, &stream) {
        reader.push(chunk);
        while let Some(f) = reader
            .next_frame()
            .expect("garbage reported as a frame error")
        {
            found.push(f);
        }
    }
    assert_eq!(found, expected, "frames lost or altered after garbage");
    let garbage_len: usize = garbage.iter().map(|r| r.len()).sum();
    assert_eq!(
        reader.skipped() as usize + reader.buffered(),
        garbage_len,
        "garbage not skipped"
    );
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// QEMU's QMP lines as the host reads them (split at newlines, each UTF-8 or
/// refused): no panic; a parsed line keeps its kind and contents when written back
/// as QEMU would write it (values with floats compared by kind only, since
/// serde_json does not promise exact float round trips).
pub fn qmp(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let Some(parsed) = QmpMessage::parse(text) else {
            continue;
        };
        let (rewritten, value) = match &parsed {
            QmpMessage::Greeting(v) => (v.clone(), Some(v)),
            QmpMessage::Return(v) => (json!({ "return": v }), Some(v)),
            QmpMessage::Error { class, desc } => {
                (json!({ "error": { "class": class, "desc": desc } }), None)
            }
            QmpMessage::Event { name, message } => {
                assert_eq!(message.get("event").and_then(Value::as_str), Some(&**name));
                (message.clone(), Some(message))
            }
        };
        let again = QmpMessage::parse(&format!("{rewritten}\n")).expect("re-parse");
        assert_eq!(
            std::mem::discriminant(&again),
            std::mem::discriminant(&parsed)
        );
        if !value.is_some_and(has_float) {
            assert_eq!(again, parsed);
        }
    }
}

/// A syscall or ioctl request in one shape: argument words, buffers, patches.
struct Call {
    args: Vec<u64>,
    bufs: Vec<SyscallBuf>,
    ptrs: Vec<PtrPatch>,
}

impl Call {
    fn from_ioctl_buf(fd: i32, cmd: u64, arg: &[u8], ptrs: &[IoctlPtr]) -> Call {
        Call {
            args: vec![fd as i64 as u64, cmd],
            bufs: vec![SyscallBuf {
                arg_idx: 2,
                data: arg.to_vec(),
                output: true,
            }],
            ptrs: ptrs
                .iter()
                .map(|p| PtrPatch {
                    buf_idx: 2,
                    ptr_offset: p.ptr_offset,
                    data_len: p.buf_len,
                    data: p.data.clone(),
                    output: p.output,
                })
                .collect(),
        }
    }

    /// The rules of docs/protocol.md ("Syscall"), written out independently of the
    /// agent's planner: whether it must accept the call.
    fn is_valid(&self) -> bool {
        let mut seen = [false; MAX_SYSCALL_ARGS];
        for b in &self.bufs {
            let idx = b.arg_idx as usize;
            if idx >= MAX_SYSCALL_ARGS || seen[idx] {
                return false;
            }
            seen[idx] = true;
        }
        let mut total: u64 = 0;
        for (i, p) in self.ptrs.iter().enumerate() {
            let Some(buf) = self.bufs.iter().find(|b| b.arg_idx == p.buf_idx) else {
                return false;
            };
            let fits = p
                .ptr_offset
                .checked_add(8)
                .is_some_and(|end| end <= buf.data.len() as u64);
            let overlaps = self.ptrs[..i]
                .iter()
                .any(|q| q.buf_idx == p.buf_idx && q.ptr_offset.abs_diff(p.ptr_offset) < 8);
            total = total.saturating_add(p.data_len);
            if !fits || overlaps || p.data.len() as u64 > p.data_len || total > u64::from(MAX_DATA)
            {
                return false;
            }
        }
        self.args.len() <= MAX_SYSCALL_ARGS
    }
}

/// What the agent makes of a decoded `Syscall`/`IoctlBuf` request before calling the
/// kernel: it accepts exactly the valid requests (an independent reading of the
/// rules); an accepted plan holds at most the cap in patch buffers; at the call each
/// argument is the host's word or its buffer's address, each buffer holds its bytes
/// with each patch's slot holding the address of that patch's own bytes (data, then
/// zeros); the answer returns the output buffers in argument order and the output
/// patches in request order.
pub fn plan(data: &[u8]) {
    let Ok(Message::Request(req)) = Message::decode(data) else {
        return;
    };
    let (call, planned) = match &req {
        Request::Syscall {
            args, bufs, ptrs, ..
        } => (
            Call {
                args: args.clone(),
                bufs: bufs.clone(),
                ptrs: ptrs.clone(),
            },
            alloc::peak_during(|| plan::plan_syscall("syscall", args, bufs.clone(), ptrs)),
        ),
        Request::IoctlBuf { fd, cmd, arg, ptrs } => (
            Call::from_ioctl_buf(*fd, *cmd, arg, ptrs),
            alloc::peak_during(|| plan::plan_ioctl_buf(*fd, *cmd, arg.clone(), ptrs)),
        ),
        _ => return,
    };
    let (result, peak) = planned;
    assert!(
        peak <= u64::from(MAX_DATA) as usize + decode_budget(data.len()),
        "planning held {peak} bytes"
    );
    match result {
        Ok(p) => {
            assert!(call.is_valid(), "accepted an invalid request: {req:?}");
            check_plan(&call, p);
        }
        Err(AgentError::InvalidRequest { .. }) => {
            assert!(!call.is_valid(), "refused a valid request: {req:?}");
        }
        Err(other) => panic!("planning failed with {other:?}"),
    }
}

fn check_plan(call: &Call, plan: SyscallPlan) {
    assert!(plan.sub_buffer_bytes() <= MAX_DATA as usize);
    let mut sorted: Vec<&SyscallBuf> = call.bufs.iter().collect();
    sorted.sort_by_key(|b| b.arg_idx);
    let response = plan.perform(|words| {
        for (idx, &word) in words.iter().enumerate() {
            let Some(buf) = sorted.iter().find(|b| b.arg_idx as usize == idx) else {
                assert_eq!(word, call.args.get(idx).copied().unwrap_or(0));
                continue;
            };
            assert_ne!(word, 0, "argument {idx} has no address");
            // SAFETY: the planner says argument `idx` holds the address of its copy of
            // `buf`, alive for this call; a wrong address faults, which the fuzzer
            // reports like any crash.
            let arg =
                unsafe { std::slice::from_raw_parts(words[idx] as *const u8, buf.data.len()) };
            let mut expected = buf.data.clone();
            for p in call.ptrs.iter().filter(|p| p.buf_idx == buf.arg_idx) {
                let at = p.ptr_offset as usize;
                let slot = &arg[at..at + 8];
                expected[at..at + 8].copy_from_slice(slot);
                let addr = u64::from_le_bytes(slot.try_into().expect("8 bytes"));
                let len = p.data_len as usize;
                assert!(addr != 0 || len == 0, "patch at {at} holds a null address");
                if len == 0 {
                    continue;
                }
                // SAFETY: as above, the slot holds the address of the patch's
                // `data_len`-byte buffer.
                let sub = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
                assert_eq!(&sub[..p.data.len()], &p.data[..], "patch at {at}: data");
                assert!(
                    sub[p.data.len()..].iter().all(|&b| b == 0),
                    "patch at {at}: zeros"
                );
            }
            assert_eq!(
                arg,
                &expected[..],
                "argument {idx} changed outside its slots"
            );
        }
        -38
    });
    let Response::Syscall { ret, bufs, outputs } = response else {
        panic!("a plan answered {response:?}")
    };
    assert_eq!(ret, -38);
    let returned: Vec<&&SyscallBuf> = sorted.iter().filter(|b| b.output).collect();
    assert_eq!(bufs.len(), returned.len());
    for (got, want) in bufs.iter().zip(&returned) {
        assert_eq!(got.len(), want.data.len());
    }
    let want: Vec<Vec<u8>> = call
        .ptrs
        .iter()
        .filter(|p| p.output)
        .map(|p| {
            let mut v = p.data.clone();
            v.resize(p.data_len as usize, 0);
            v
        })
        .collect();
    assert_eq!(outputs, want);
}
