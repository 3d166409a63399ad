//! The seed corpus, generated rather than hand-written: valid frames of every
//! message type, handshakes, garbage before frames, QMP greeting/return/error/event
//! lines, and syscall plans. `tests/seeds.rs` checks that `fuzz/corpus/` holds
//! exactly these (and rewrites it with `PROVIUM_FUZZ_WRITE_SEEDS=1`).

use provium_proto::{
    encode_message, AgentError, IoctlPtr, Message, PtrPatch, PtySize, Request, Response,
    SyscallBuf, MAX_PAYLOAD, PROTOCOL_VERSION,
};

/// One seed: its target, its file name, its bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn syscall_with_patches() -> Request {
    Request::Syscall {
        nr: 20,
        args: vec![1, 0, 2],
        bufs: vec![SyscallBuf {
            arg_idx: 1,
            data: [
                0u64.to_le_bytes(),
                5u64.to_le_bytes(),
                [0; 8],
                3u64.to_le_bytes(),
            ]
            .concat(),
            output: true,
        }],
        ptrs: vec![
            PtrPatch {
                buf_idx: 1,
                ptr_offset: 0,
                data_len: 5,
                data: b"hello".to_vec(),
                output: false,
            },
            PtrPatch {
                buf_idx: 1,
                ptr_offset: 16,
                data_len: 8,
                data: b"abc".to_vec(),
                output: true,
            },
        ],
    }
}

/// One of each request, named.
pub fn requests() -> Vec<(&'static str, Request)> {
    vec![
        (
            "exec",
            Request::Exec {
                cmd: "echo hi; exit 3".into(),
                timeout_ms: 5000,
            },
        ),
        (
            "read_file",
            Request::ReadFile {
                path: "/etc/passwd".into(),
            },
        ),
        (
            "write_file",
            Request::WriteFile {
                path: "/tmp/x".into(),
                size: 4,
                mode: Some(0o755),
            },
        ),
        (
            "write_file_default_mode",
            Request::WriteFile {
                path: "/tmp/y".into(),
                size: 0,
                mode: None,
            },
        ),
        ("dmesg", Request::Dmesg),
        ("mount_vfs", Request::MountVfs),
        ("shutdown", Request::Shutdown),
        (
            "syscall_plain",
            Request::Syscall {
                nr: 39,
                args: vec![],
                bufs: vec![],
                ptrs: vec![],
            },
        ),
        ("syscall_patched", syscall_with_patches()),
        (
            "ioctl",
            Request::Ioctl {
                fd: 3,
                cmd: 0x541b,
                data: Some(vec![0; 4]),
            },
        ),
        (
            "ioctl_no_data",
            Request::Ioctl {
                fd: -1,
                cmd: 0x5401,
                data: None,
            },
        ),
        (
            "ioctl_buf",
            Request::IoctlBuf {
                fd: 4,
                cmd: 0xc018_0000,
                arg: vec![0; 24],
                ptrs: vec![IoctlPtr {
                    ptr_offset: 8,
                    buf_len: 16,
                    data: b"x".to_vec(),
                    output: true,
                }],
            },
        ),
        (
            "background",
            Request::Background {
                cmd: "sleep 10".into(),
            },
        ),
        (
            "job_wait",
            Request::JobWait {
                id: 7,
                timeout_ms: 1500,
            },
        ),
        ("job_kill", Request::JobKill { id: 1 }),
        ("spawn_thread", Request::Spawn { thread: true }),
        ("spawn_process", Request::Spawn { thread: false }),
        ("worker_kill", Request::WorkerKill { channel: 2 }),
        ("quiesce", Request::Quiesce),
        ("ping", Request::Ping),
        ("cancel", Request::Cancel { seq: 7 }),
        (
            "session_pty",
            Request::Session {
                command: "exec /bin/sh -l".into(),
                pty: Some(PtySize { rows: 24, cols: 80 }),
                term: "xterm".into(),
            },
        ),
        (
            "session_pipes",
            Request::Session {
                command: "uname -r".into(),
                pty: None,
                term: String::new(),
            },
        ),
    ]
}

/// One of each response and each error, named.
pub fn responses() -> Vec<(&'static str, Response)> {
    let errors = vec![
        (
            "error_path",
            AgentError::Path {
                op: "open".into(),
                path: "/nope".into(),
                errno: 2,
            },
        ),
        (
            "error_os",
            AgentError::Os {
                op: "fork".into(),
                errno: 12,
            },
        ),
        (
            "error_output_too_large",
            AgentError::OutputTooLarge {
                cmd: "yes".into(),
                cap: 16 << 20,
            },
        ),
        (
            "error_file_too_large",
            AgentError::FileTooLarge {
                path: "/big".into(),
                cap: 16 << 20,
            },
        ),
        (
            "error_invalid_request",
            AgentError::InvalidRequest {
                op: "syscall".into(),
                reason: "7 arguments".into(),
            },
        ),
        ("error_unknown_job", AgentError::UnknownJob { id: 3 }),
        (
            "error_unknown_channel",
            AgentError::UnknownChannel { channel: 4 },
        ),
        (
            "error_worker_gone",
            AgentError::WorkerGone {
                channel: 5,
                reason: "killed by the host".into(),
            },
        ),
        (
            "error_unsupported",
            AgentError::Unsupported {
                op: "spawn".into(),
                reason: "channel 1 is a worker".into(),
            },
        ),
        ("error_no_handshake", AgentError::NoHandshake),
        (
            "error_command_timed_out",
            AgentError::CommandTimedOut {
                cmd: "sleep 9".into(),
                after_ms: 5000,
            },
        ),
    ];
    let mut all = vec![
        (
            "exec",
            Response::Exec {
                exit_code: 130,
                stdout: b"out\n".to_vec(),
                stderr: vec![0xff, 0],
            },
        ),
        ("file", Response::File { size: 256 }),
        ("done", Response::Done),
        (
            "dmesg",
            Response::Dmesg {
                log: b"[    0.000000] Linux\n".to_vec(),
            },
        ),
        (
            "syscall",
            Response::Syscall {
                ret: -2,
                bufs: vec![vec![1], vec![]],
                outputs: vec![vec![9; 9]],
            },
        ),
        (
            "ioctl",
            Response::Ioctl {
                ret: 0,
                data: Some(vec![4, 0, 0, 0]),
            },
        ),
        (
            "ioctl_no_data",
            Response::Ioctl {
                ret: -25,
                data: None,
            },
        ),
        ("job", Response::Job { id: 1, pid: 4242 }),
        (
            "job_status",
            Response::JobStatus {
                running: true,
                exit_code: -1,
                stdout: vec![],
                stderr: b"e".to_vec(),
            },
        ),
        (
            "spawned",
            Response::Spawned {
                channel: 1,
                pid: 77,
            },
        ),
        ("quiesced", Response::Quiesced),
        ("pong", Response::Pong),
        ("session_ended", Response::SessionEnded { exit_code: 129 }),
    ];
    all.extend(errors.into_iter().map(|(n, e)| (n, Response::Error(e))));
    all
}

/// The messages outside requests and responses: the handshake, credit, session traffic.
fn handshake() -> Vec<(&'static str, Message)> {
    vec![
        (
            "hello",
            Message::Hello {
                version: PROTOCOL_VERSION,
            },
        ),
        (
            "hello_ack",
            Message::HelloAck {
                version: PROTOCOL_VERSION,
            },
        ),
        ("credit", Message::Credit { bytes: 4096 }),
        (
            "input",
            Message::Input {
                bytes: b"ls\r".to_vec(),
            },
        ),
        (
            "resize",
            Message::Resize {
                rows: 50,
                cols: 132,
            },
        ),
        (
            "output",
            Message::Output {
                stream: provium_proto::STDERR,
                bytes: b"$ ".to_vec(),
            },
        ),
    ]
}

fn frame_of(channel: u32, seq: u32, msg: &Message) -> Vec<u8> {
    encode_message(channel, seq, msg).expect("seed messages are small")
}

/// A `resync` record: garbage, then a frame described by channel, seq and payload.
fn record(garbage: &[u8], channel: u8, seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![garbage.len() as u8];
    out.extend_from_slice(garbage);
    out.extend_from_slice(&[channel, seq, payload.len() as u8]);
    out.extend_from_slice(payload);
    out
}

pub fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push(Seed {
            target,
            name: name.to_string(),
            bytes,
        })
    };
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
    };
    let ping = Message::Request(Request::Ping);

    for (name, msg) in handshake() {
        add("request", name, msg.encode());
        add("frame", name, [vec![0], frame_of(0, 1, &msg)].concat());
    }
    for (name, req) in requests() {
        let msg = Message::Request(req);
        add("request", name, msg.encode());
        add(
            "frame",
            &format!("request_{name}"),
            [vec![3], frame_of(2, 40, &msg)].concat(),
        );
        if matches!(
            msg,
            Message::Request(Request::Syscall { .. } | Request::IoctlBuf { .. })
        ) {
            add("plan", name, msg.encode());
        }
    }
    for (name, resp) in responses() {
        let msg = Message::Response(resp);
        add("response", name, msg.encode());
        add(
            "frame",
            &format!("response_{name}"),
            [vec![5], frame_of(1, 41, &msg)].concat(),
        );
    }
    add(
        "frame",
        "handshake_then_requests",
        [
            vec![1],
            frame_of(0, 1, &hello),
            frame_of(
                0,
                1,
                &Message::HelloAck {
                    version: PROTOCOL_VERSION,
                },
            ),
            frame_of(0, 2, &Message::Request(Request::Spawn { thread: false })),
            frame_of(1, 3, &ping),
        ]
        .concat(),
    );
    add(
        "frame",
        "garbage_then_frame",
        [
            vec![9],
            b"\x00\xffnoise PRVM\x01\x02\x03 more noise PRV".to_vec(),
            frame_of(0, 4, &hello),
        ]
        .concat(),
    );
    let mut corrupt = frame_of(2, 3, &ping);
    *corrupt.last_mut().expect("payload") ^= 0xff;
    add(
        "frame",
        "corrupt_payload_then_frame",
        [vec![2], corrupt, frame_of(2, 4, &ping)].concat(),
    );
    let mut oversize = frame_of(0, 0, &hello)[..24].to_vec();
    oversize[12..16].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    let sum = oversize[..20].iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    oversize[20..24].copy_from_slice(&sum.to_le_bytes());
    add(
        "frame",
        "oversize_header_then_frame",
        [vec![4], oversize, frame_of(0, 5, &hello)].concat(),
    );

    // A file's data in chunks after its request (host to agent) or before its
    // answer (agent to host).
    let data = Message::Data {
        bytes: b"hello".to_vec(),
    };
    add("request", "data", data.encode());
    let write = Message::Request(Request::WriteFile {
        path: "/tmp/f".into(),
        size: 10,
        mode: None,
    });
    add(
        "frame",
        "write_file_then_data",
        [
            vec![6],
            frame_of(0, 7, &write),
            frame_of(0, 7, &data),
            frame_of(0, 7, &data),
        ]
        .concat(),
    );
    add(
        "frame",
        "data_then_file",
        [
            vec![8],
            frame_of(0, 8, &data),
            frame_of(0, 8, &Message::Response(Response::File { size: 5 })),
        ]
        .concat(),
    );

    let hello_payload = hello.encode();
    let exec = Message::Request(Request::Exec {
        cmd: "id".into(),
        timeout_ms: 0,
    })
    .encode();
    add(
        "resync",
        "frame_only",
        [vec![0], record(b"", 0, 1, &hello_payload)].concat(),
    );
    add(
        "resync",
        "garbage_then_frames",
        [
            vec![7],
            record(b"\x00\xffline noise", 0, 1, &hello_payload),
            record(b"PRVM\x01\x02\x03false magic", 1, 2, &exec),
            record(b"PRV", 2, 3, &ping.encode()),
        ]
        .concat(),
    );
    add(
        "resync",
        "magic_with_broken_header",
        [
            vec![3],
            record(
                &[b"PRVM".as_slice(), &[0; 20]].concat(),
                0,
                9,
                &hello_payload,
            ),
        ]
        .concat(),
    );
    add(
        "resync",
        "trailing_garbage",
        [vec![1], record(b"", 0, 1, &exec), vec![4], b"PRVM".to_vec()].concat(),
    );

    let greeting = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"Debian 1:10.0.2+ds-2\"}, \"capabilities\": [\"oob\"]}}\n";
    add("qmp", "greeting", greeting.as_bytes().to_vec());
    add("qmp", "return_empty", b"{\"return\": {}}\n".to_vec());
    add(
        "qmp",
        "return_status",
        b"{\"return\": {\"status\": \"paused\", \"singlestep\": false, \"running\": false}}\n"
            .to_vec(),
    );
    add(
        "qmp",
        "error",
        b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'fd' expects a file descriptor\"}}\n".to_vec(),
    );
    add(
        "qmp",
        "event",
        b"{\"timestamp\": {\"seconds\": 1764480000, \"microseconds\": 12345}, \"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}\n".to_vec(),
    );
    add(
        "qmp",
        "session",
        [
            greeting,
            "{\"return\": {}}\r\n",
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\n",
            "{\"return\": {\"status\": \"completed\", \"total-time\": 1.5}}\n",
            "not json\n",
        ]
        .concat()
        .into_bytes(),
    );
    seeds
}
