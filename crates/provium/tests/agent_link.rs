//! The host link against the real (embedded) agent serving a unix socket on the host
//! (`provium-agent --serve-unix`): protocol, handshake and every operation that can
//! run outside a VM.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use provium::vm::agent_bin::AGENT;
use provium::vm::client::{AgentClient, Session, SessionEvent, SessionSpec};
use provium::vm::link::{Link, LinkError, Liveness};
use provium_proto::{
    encode_message, AgentError, FrameReader, IoctlPtr, Message, PtrPatch, Request, Response,
    SyscallBuf, MAX_DATA,
};

const T: Duration = Duration::from_secs(20);

/// The embedded agent, written out once: writing it per test races with other tests
/// forking (a child inheriting the open file makes exec fail with ETXTBSY).
fn agent_exe() -> &'static Path {
    static EXE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, exe) = EXE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("provium-agent");
        std::fs::write(&exe, AGENT).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, exe)
    });
    exe
}

struct Agent {
    child: Arc<Mutex<Child>>,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        let child = Command::new(agent_exe())
            .arg("--serve-unix")
            .arg(&socket)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Agent {
            child: Arc::new(Mutex::new(child)),
            socket,
            dir,
        }
    }

    fn pid(&self) -> i64 {
        i64::from(self.child.lock().unwrap().id())
    }

    fn connect_stream(&self) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("agent socket {} never accepted: {e}", self.socket.display()),
            }
        }
    }

    fn liveness(&self) -> Liveness {
        let child = Arc::clone(&self.child);
        Arc::new(move || {
            child
                .lock()
                .unwrap()
                .try_wait()
                .ok()
                .flatten()
                .map(|status| format!("agent exited: {status}"))
        })
    }

    fn link(&self) -> Link {
        Link::connect("host-agent", self.connect_stream(), self.liveness(), T).unwrap()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

fn exec(link: &Link, channel: u32, cmd: &str) -> (i32, String, String) {
    match link
        .call(
            channel,
            &Request::Exec {
                cmd: cmd.into(),
                timeout_ms: 0,
            },
            T,
        )
        .unwrap()
    {
        Response::Exec {
            exit_code,
            stdout,
            stderr,
        } => (
            exit_code,
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        ),
        other => panic!("exec answered {other:?}"),
    }
}

fn syscall(link: &Link, channel: u32, nr: i64, args: &[u64]) -> i64 {
    match link
        .call(
            channel,
            &Request::Syscall {
                nr,
                args: args.to_vec(),
                bufs: vec![],
                ptrs: vec![],
            },
            T,
        )
        .unwrap()
    {
        Response::Syscall { ret, .. } => ret,
        other => panic!("syscall answered {other:?}"),
    }
}

fn agent_error(result: Result<Response, LinkError>) -> AgentError {
    match result {
        Err(e) => e
            .agent_error()
            .cloned()
            .unwrap_or_else(|| panic!("expected an agent error, got {e}")),
        Ok(r) => panic!("expected an agent error, got {r:?}"),
    }
}

#[test]
fn exec_captures_output_and_exit_code() {
    let agent = Agent::start();
    let link = agent.link();
    assert_eq!(
        exec(&link, 0, "echo out; echo err >&2; exit 3"),
        (3, "out\n".into(), "err\n".into())
    );
    assert_eq!(exec(&link, 0, "kill -9 $$").0, 128 + 9);
    // stdin reads as empty, so `cat` ends at once.
    assert_eq!(exec(&link, 0, "cat"), (0, String::new(), String::new()));
    // Interleaved large outputs on both streams are drained concurrently.
    let (code, out, err) = exec(
        &link,
        0,
        "i=0; while [ $i -lt 3000 ]; do echo stdout-line-$i; echo stderr-line-$i >&2; i=$((i+1)); done",
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3000);
    assert_eq!(err.lines().count(), 3000);
}

#[test]
fn exec_runs_in_its_own_session() {
    let agent = Agent::start();
    let link = agent.link();
    let (_, out, _) = exec(
        &link,
        0,
        "echo $$; ps -o sid= -p $$ 2>/dev/null || cut -d' ' -f6 /proc/$$/stat",
    );
    let mut lines = out.lines();
    let pid = lines.next().unwrap().trim().to_string();
    let sid = lines.next().unwrap().trim().to_string();
    assert_eq!(pid, sid, "the shell must lead its own session");
}

#[test]
fn background_grandchild_does_not_hold_the_call() {
    let agent = Agent::start();
    let link = agent.link();
    let start = Instant::now();
    let (code, out, _) = exec(&link, 0, "sleep 4 & echo started");
    assert_eq!((code, out.as_str()), (0, "started\n"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "exec waited {:?} for a grandchild",
        start.elapsed()
    );
}

#[test]
fn oversize_output_is_an_error_naming_the_cap() {
    let agent = Agent::start();
    let link = agent.link();
    let err = agent_error(link.call(
        0,
        &Request::Exec {
            cmd: format!("head -c {} /dev/zero", MAX_DATA + 1),
            timeout_ms: 0,
        },
        T,
    ));
    assert!(
        matches!(err, AgentError::OutputTooLarge { cap, .. } if cap == u64::from(MAX_DATA)),
        "{err}"
    );
    assert!(err.to_string().contains(&MAX_DATA.to_string()), "{err}");
    // The link still works afterwards.
    assert_eq!(exec(&link, 0, "echo ok").1, "ok\n");
}

#[test]
fn files_round_trip_binary_data() {
    let agent = Agent::start();
    let link = agent.link();
    let path = agent.path("bin");
    let data: Vec<u8> = (0..=255u8).cycle().take(256 * 1000 + 7).collect();
    let write = Request::WriteFile {
        path: path.clone(),
        size: data.len() as u64,
        mode: Some(0o600),
    };
    assert_eq!(
        link.call_with_data(0, &write, &data, T).unwrap(),
        (Response::Done, vec![])
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let (response, back) = link
        .call_with_data(0, &Request::ReadFile { path }, &[], T)
        .unwrap();
    assert_eq!(
        response,
        Response::File {
            size: data.len() as u64
        }
    );
    assert!(back == data, "the file read back differs");
    // An empty file is a request and an answer, with no data between.
    let empty = agent.path("empty");
    let write = Request::WriteFile {
        path: empty.clone(),
        size: 0,
        mode: None,
    };
    assert_eq!(link.call(0, &write, T).unwrap(), Response::Done);
    assert_eq!(
        link.call(0, &Request::ReadFile { path: empty }, T).unwrap(),
        Response::File { size: 0 }
    );
}

/// Sends `data` as a `WriteFile` of `path`'s contents.
fn write_file(link: &Link, path: &str, data: &[u8]) -> Result<Response, LinkError> {
    let write = Request::WriteFile {
        path: path.to_string(),
        size: data.len() as u64,
        mode: None,
    };
    link.call_with_data(0, &write, data, T).map(|(r, _)| r)
}

#[test]
fn sixteen_mib_is_the_file_limit() {
    let agent = Agent::start();
    let link = agent.link();
    let path = agent.path("big");
    let data = vec![0x5au8; MAX_DATA as usize];
    assert_eq!(write_file(&link, &path, &data).unwrap(), Response::Done);
    match link
        .call_with_data(0, &Request::ReadFile { path: path.clone() }, &[], T)
        .unwrap()
    {
        (Response::File { size }, back) => {
            assert_eq!(size, u64::from(MAX_DATA));
            assert!(back == data, "the file read back differs");
        }
        other => panic!("{other:?}"),
    }
    // Refused before anything is opened; the host stops sending at the answer.
    let err = agent_error(write_file(&link, &path, &vec![0; MAX_DATA as usize + 1]));
    assert!(
        matches!(&err, AgentError::FileTooLarge { path: p, .. } if *p == path),
        "{err}"
    );
    let grown = agent.path("grown");
    std::fs::write(&grown, vec![1u8; MAX_DATA as usize + 1]).unwrap();
    let err = agent_error(
        link.call_with_data(
            0,
            &Request::ReadFile {
                path: grown.clone(),
            },
            &[],
            T,
        )
        .map(|(r, _)| r),
    );
    assert!(err.to_string().contains(&grown), "{err}");
    // The link goes on after the abandoned stream.
    assert_eq!(link.call(0, &Request::Ping, T).unwrap(), Response::Pong);
}

#[test]
fn missing_path_names_path_and_errno() {
    let agent = Agent::start();
    let link = agent.link();
    let path = agent.path("missing/file");
    let err = agent_error(link.call(0, &Request::ReadFile { path: path.clone() }, T));
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert_eq!(err.to_string(), format!("open {path}: ENOENT (errno 2)"));
    let err = agent_error(write_file(&link, &path, b"x"));
    assert!(
        err.to_string().contains(&path) && err.errno() == Some(libc::ENOENT),
        "{err}"
    );
}

#[test]
fn dmesg_returns_the_kernel_log() {
    let agent = Agent::start();
    let link = agent.link();
    match link.call(0, &Request::Dmesg, T) {
        Ok(Response::Dmesg { log }) => assert!(!log.is_empty()),
        Err(e) => assert!(e.to_string().contains("klogctl"), "{e}"),
        Ok(other) => panic!("{other:?}"),
    }
}

#[test]
fn host_mode_refuses_power_off_and_mounts() {
    let agent = Agent::start();
    let link = agent.link();
    for req in [Request::Shutdown, Request::MountVfs] {
        let err = agent_error(link.call(0, &req, T));
        assert!(matches!(err, AgentError::Unsupported { .. }), "{err}");
    }
    assert_eq!(link.call(0, &Request::Ping, T).unwrap(), Response::Pong);
}

#[test]
fn raw_syscalls_return_raw_results() {
    let agent = Agent::start();
    let link = agent.link();
    assert_eq!(syscall(&link, 0, libc::SYS_getpid, &[]), agent.pid());
    assert_eq!(
        syscall(&link, 0, libc::SYS_close, &[u64::MAX]),
        -i64::from(libc::EBADF)
    );
}

#[test]
fn syscall_buffers_and_pointer_patching() {
    let agent = Agent::start();
    let link = agent.link();
    // uname fills a 390-byte buffer passed as argument 0.
    let resp = link
        .call(
            0,
            &Request::Syscall {
                nr: libc::SYS_uname,
                args: vec![],
                bufs: vec![SyscallBuf {
                    arg_idx: 0,
                    data: vec![0; 390],
                    output: true,
                }],
                ptrs: vec![],
            },
            T,
        )
        .unwrap();
    match resp {
        Response::Syscall { ret, bufs, outputs } => {
            assert_eq!(ret, 0);
            assert!(bufs[0].starts_with(b"Linux\0"));
            assert!(outputs.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // readv through an iovec whose base pointer is patched in by the agent.
    let path = agent.path("hello");
    std::fs::write(&path, "hello world").unwrap();
    let mut c_path = path.into_bytes();
    c_path.push(0);
    let open = Request::Syscall {
        nr: libc::SYS_open,
        args: vec![0, libc::O_RDONLY as u64],
        bufs: vec![SyscallBuf {
            arg_idx: 0,
            data: c_path,
            output: false,
        }],
        ptrs: vec![],
    };
    let fd = match link.call(0, &open, T).unwrap() {
        // An input-only buffer does not come back.
        Response::Syscall { ret, bufs, .. } if bufs.is_empty() => ret,
        other => panic!("{other:?}"),
    };
    assert!(fd >= 0, "open failed: {fd}");
    let mut iovec = vec![0u8; 16];
    iovec[8..].copy_from_slice(&5u64.to_le_bytes());
    let readv = Request::Syscall {
        nr: libc::SYS_readv,
        args: vec![fd as u64, 0, 1],
        bufs: vec![SyscallBuf {
            arg_idx: 1,
            data: iovec,
            output: true,
        }],
        ptrs: vec![PtrPatch {
            buf_idx: 1,
            ptr_offset: 0,
            data_len: 5,
            data: vec![],
            output: true,
        }],
    };
    match link.call(0, &readv, T).unwrap() {
        Response::Syscall { ret, bufs, outputs } => {
            assert_eq!(ret, 5);
            assert_eq!(bufs.len(), 1);
            assert_eq!(outputs, vec![b"hello".to_vec()]);
        }
        other => panic!("{other:?}"),
    }
    // ioctl(FIONREAD) on a regular file: a legacy ioctl with no direction bits still
    // returns its argument.
    match link
        .call(
            0,
            &Request::Ioctl {
                fd: fd as i32,
                cmd: libc::FIONREAD,
                data: Some(vec![0; 4]),
            },
            T,
        )
        .unwrap()
    {
        Response::Ioctl { ret, data } => {
            assert_eq!(ret, 0);
            assert_eq!(data, Some(6u32.to_le_bytes().to_vec()));
        }
        other => panic!("{other:?}"),
    }
    // ioctl_buf patches pointers into the argument struct; a bad fd still returns
    // the struct and the raw -EBADF.
    let resp = link
        .call(
            0,
            &Request::IoctlBuf {
                fd: -1,
                cmd: 0xc010_0000,
                arg: vec![0; 16],
                ptrs: vec![IoctlPtr {
                    ptr_offset: 8,
                    buf_len: 4,
                    data: b"ab".to_vec(),
                    output: true,
                }],
            },
            T,
        )
        .unwrap();
    match resp {
        Response::Syscall { ret, bufs, outputs } => {
            assert_eq!(ret, -i64::from(libc::EBADF));
            assert_ne!(&bufs[0][8..16], &[0u8; 8], "pointer not patched");
            assert_eq!(outputs, vec![b"ab\0\0".to_vec()]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn syscall_request_errors_are_clear() {
    let agent = Agent::start();
    let link = agent.link();
    let call = |args: Vec<u64>, bufs: Vec<SyscallBuf>, ptrs: Vec<PtrPatch>| {
        agent_error(link.call(
            0,
            &Request::Syscall {
                nr: libc::SYS_getpid,
                args,
                bufs,
                ptrs,
            },
            T,
        ))
        .to_string()
    };
    let buf = |arg_idx, len| SyscallBuf {
        arg_idx,
        data: vec![0; len],
        output: false,
    };
    let ptr = |buf_idx, ptr_offset| PtrPatch {
        buf_idx,
        ptr_offset,
        data_len: 4,
        data: vec![],
        output: false,
    };
    let e = call(vec![0; 7], vec![], vec![]);
    assert!(e.contains("7 arguments"), "{e}");
    let e = call(vec![], vec![buf(6, 8)], vec![]);
    assert!(e.contains("buffer argument index 6"), "{e}");
    let e = call(vec![], vec![buf(1, 16)], vec![ptr(1, 12)]);
    assert!(
        e.contains("offset 12") && e.contains("16-byte buffer"),
        "{e}"
    );
    let e = call(vec![], vec![buf(1, 16)], vec![ptr(2, 0)]);
    assert!(e.contains("no buffer is passed as argument 2"), "{e}");
    let e = call(vec![], vec![buf(1, 16)], vec![ptr(1, u64::MAX)]);
    assert!(e.contains("does not fit 8 bytes"), "{e}");
}

#[test]
fn background_jobs() {
    let agent = Agent::start();
    let link = agent.link();
    let (id, pid) = match link
        .call(
            0,
            &Request::Background {
                cmd: "echo hi; sleep 0.5; echo done >&2; exit 4".into(),
            },
            T,
        )
        .unwrap()
    {
        Response::Job { id, pid } => (id, pid),
        other => panic!("{other:?}"),
    };
    assert!(pid > 0);
    match link
        .call(0, &Request::JobWait { id, timeout_ms: 0 }, T)
        .unwrap()
    {
        Response::JobStatus {
            running, exit_code, ..
        } => assert_eq!((running, exit_code), (true, -1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        link.call(
            0,
            &Request::JobWait {
                id,
                timeout_ms: 10_000
            },
            T
        )
        .unwrap(),
        Response::JobStatus {
            running: false,
            exit_code: 4,
            stdout: b"hi\n".to_vec(),
            stderr: b"done\n".to_vec(),
        }
    );
    let id = match link
        .call(
            0,
            &Request::Background {
                cmd: "echo x; exec sleep 30".into(),
            },
            T,
        )
        .unwrap()
    {
        Response::Job { id, .. } => id,
        other => panic!("{other:?}"),
    };
    let start = Instant::now();
    match link.call(0, &Request::JobKill { id }, T).unwrap() {
        Response::JobStatus {
            running, exit_code, ..
        } => assert_eq!((running, exit_code), (false, 128 + 9)),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    // A killed job is forgotten; unknown ids are errors naming the id.
    let err = agent_error(link.call(0, &Request::JobWait { id, timeout_ms: 0 }, T));
    assert_eq!(err, AgentError::UnknownJob { id });
}

fn spawn(link: &Link, thread: bool) -> (u32, i32) {
    match link.call(0, &Request::Spawn { thread }, T).unwrap() {
        Response::Spawned { channel, pid } => (channel, pid),
        other => panic!("{other:?}"),
    }
}

#[test]
fn process_workers_have_their_own_pid_and_channel() {
    let agent = Agent::start();
    let link = agent.link();
    let (channel, pid) = spawn(&link, false);
    assert_ne!(channel, 0);
    assert_eq!(
        syscall(&link, channel, libc::SYS_getpid, &[]),
        i64::from(pid)
    );
    assert_ne!(i64::from(pid), agent.pid());
    assert_eq!(exec(&link, channel, "echo from-worker").1, "from-worker\n");
    // Spawning is for the main channel only.
    let err = agent_error(link.call(channel, &Request::Spawn { thread: false }, T));
    assert!(matches!(err, AgentError::Unsupported { .. }), "{err}");
    assert_eq!(
        link.call(0, &Request::WorkerKill { channel }, T).unwrap(),
        Response::Done
    );
    let err = agent_error(link.call(channel, &Request::Ping, T));
    assert!(matches!(err, AgentError::WorkerGone { .. }), "{err}");
    let err = agent_error(link.call(77, &Request::Ping, T));
    assert_eq!(err, AgentError::UnknownChannel { channel: 77 });
}

#[test]
fn a_worker_that_dies_is_reported_gone() {
    let agent = Agent::start();
    let link = agent.link();
    let (channel, pid) = spawn(&link, false);
    let err = agent_error(link.call(
        channel,
        &Request::Syscall {
            nr: libc::SYS_exit_group,
            args: vec![7],
            bufs: vec![],
            ptrs: vec![],
        },
        T,
    ));
    assert!(
        err.to_string()
            .contains(&format!("worker process {pid} exited with status 7")),
        "{err}"
    );
    let err = agent_error(link.call(channel, &Request::Ping, T));
    assert!(matches!(err, AgentError::WorkerGone { .. }), "{err}");
    // The main channel is unaffected.
    assert_eq!(link.call(0, &Request::Ping, T).unwrap(), Response::Pong);
}

#[test]
fn thread_workers_have_independent_credentials() {
    let agent = Agent::start();
    let link = agent.link();
    let (channel, tid) = spawn(&link, true);
    assert_eq!(syscall(&link, channel, libc::SYS_getpid, &[]), agent.pid());
    assert_eq!(
        syscall(&link, channel, libc::SYS_gettid, &[]),
        i64::from(tid)
    );
    assert_eq!(syscall(&link, channel, libc::SYS_setuid, &[65534]), 0);
    assert_eq!(syscall(&link, channel, libc::SYS_getuid, &[]), 65534);
    assert_eq!(syscall(&link, 0, libc::SYS_getuid, &[]), 0);
    // Commands started by the worker inherit its credentials.
    assert_eq!(exec(&link, channel, "id -u").1, "65534\n");
    assert_eq!(
        link.call(0, &Request::WorkerKill { channel }, T).unwrap(),
        Response::Done
    );
    let err = agent_error(link.call(channel, &Request::Ping, T));
    assert!(matches!(err, AgentError::WorkerGone { .. }), "{err}");
}

fn syscall_request(nr: i64, args: &[u64]) -> Request {
    Request::Syscall {
        nr,
        args: args.to_vec(),
        bufs: vec![],
        ptrs: vec![],
    }
}

/// A thread worker's death is seen within a second, whether the thread ends during
/// a request or between two: its call fails with the reason, later calls at once.
fn assert_reported_gone(link: &Link, channel: u32, tid: i32, call: &Request) {
    let start = Instant::now();
    let err = agent_error(link.call(channel, call, T));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        matches!(&err, AgentError::WorkerGone { reason, .. } if reason.contains(&format!("thread {tid} ended"))),
        "{err}"
    );
    let start = Instant::now();
    let err = agent_error(link.call(channel, &Request::Ping, T));
    assert!(matches!(err, AgentError::WorkerGone { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
    // The agent and its other channels go on.
    assert_eq!(link.call(0, &Request::Ping, T).unwrap(), Response::Pong);
}

#[test]
fn a_thread_worker_that_exits_is_reported_gone_at_once() {
    let agent = Agent::start();
    let link = agent.link();
    let (channel, tid) = spawn(&link, true);
    let (other, _) = spawn(&link, true);
    // exit(2) ends the calling thread only.
    assert_reported_gone(&link, channel, tid, &syscall_request(libc::SYS_exit, &[0]));
    assert_eq!(link.call(other, &Request::Ping, T).unwrap(), Response::Pong);
    assert_eq!(exec(&link, 0, "echo alive").1, "alive\n");
}

#[test]
fn a_thread_worker_killed_by_seccomp_is_reported_gone_at_once() {
    let agent = Agent::start();
    let link = agent.link();
    let (channel, tid) = spawn(&link, true);
    // prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT): from then on any syscall but read,
    // write, exit and sigreturn kills the thread; its answer still goes out.
    let strict = syscall_request(libc::SYS_prctl, &[22, 1]);
    match link.call(channel, &strict, T).unwrap() {
        Response::Syscall { ret, .. } => assert_eq!(ret, 0),
        other => panic!("{other:?}"),
    }
    assert_reported_gone(&link, channel, tid, &syscall_request(libc::SYS_getpid, &[]));
}

#[test]
fn a_busy_main_channel_does_not_hold_up_the_workers() {
    let agent = Agent::start();
    let link = agent.link();
    let (process, _) = spawn(&link, false);
    let (thread, _) = spawn(&link, true);
    let busy = {
        let link = link.clone();
        std::thread::spawn(move || exec(&link, 0, "sleep 2; echo done"))
    };
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    for channel in [process, thread] {
        assert_eq!(
            link.call(channel, &Request::Ping, T).unwrap(),
            Response::Pong
        );
        assert_eq!(exec(&link, channel, "echo meanwhile").1, "meanwhile\n");
    }
    // A file moves while the main channel's command runs.
    let path = agent.path("meanwhile");
    let data = vec![3u8; 1 << 20];
    let write = Request::WriteFile {
        path: path.clone(),
        size: data.len() as u64,
        mode: None,
    };
    link.call_with_data(thread, &write, &data, T).unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the workers waited for the main channel: {:?}",
        start.elapsed()
    );
    assert_eq!(busy.join().unwrap().1, "done\n");
    assert_eq!(std::fs::read(path).unwrap(), data);
}

#[test]
fn a_cancelled_command_is_killed_and_the_channel_serves_the_next_call() {
    let agent = Agent::start();
    let link = agent.link();
    let (thread, _) = spawn(&link, true);
    let (process, _) = spawn(&link, false);
    for channel in [0, thread, process] {
        let err = link
            .call(
                channel,
                &Request::Exec {
                    cmd: "sleep 30".into(),
                    timeout_ms: 0,
                },
                Duration::from_millis(500),
            )
            .unwrap_err();
        assert!(matches!(err, LinkError::Timeout { .. }), "{err}");
        // The host sent a cancel on giving up: the next call is not queued behind
        // the 30 s command.
        let start = Instant::now();
        assert_eq!(exec(&link, channel, "echo next").1, "next\n");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "channel {channel}: {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn quiesce_then_reconnect() {
    let agent = Agent::start();
    let link = agent.link();
    link.quiesce(T).unwrap();
    // A quiesced agent reads nothing but a new Hello.
    let err = link
        .call(0, &Request::Ping, Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, LinkError::Timeout { .. }), "{err}");
    link.resync_and_hello(agent.connect_stream(), T).unwrap();
    assert_eq!(exec(&link, 0, "echo again").1, "again\n");
}

/// Writes raw bytes, then reads frames until one arrives.
fn raw_exchange(stream: &mut UnixStream, bytes: &[u8]) -> Message {
    use std::io::Read;
    stream.write_all(bytes).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("agent answered");
        assert!(n > 0, "agent closed the connection");
        reader.push(&buf[..n]);
        if let Some(frame) = reader.next_frame().unwrap() {
            return frame.message().unwrap();
        }
    }
}

#[test]
fn agent_skips_garbage_and_refuses_requests_before_an_accepted_hello() {
    let agent = Agent::start();
    let mut stream = agent.connect_stream();
    let ping = encode_message(0, 1, &Message::Request(Request::Ping)).unwrap();
    assert_eq!(
        raw_exchange(&mut stream, &ping),
        Message::Response(Response::Error(AgentError::NoHandshake))
    );
    // A wrong version is answered with the agent's own, and requests stay refused.
    let hello = encode_message(0, 2, &Message::Hello { version: 99 }).unwrap();
    assert_eq!(
        raw_exchange(&mut stream, &hello),
        Message::HelloAck {
            version: provium_proto::PROTOCOL_VERSION
        }
    );
    assert_eq!(
        raw_exchange(&mut stream, &ping),
        Message::Response(Response::Error(AgentError::NoHandshake))
    );
    // Stale bytes (a cut-off frame, noise) before a good Hello are skipped.
    let mut bytes = b"PRVM\x00\x01 stale noise \xff\xfe".to_vec();
    bytes.extend(
        encode_message(
            0,
            3,
            &Message::Hello {
                version: provium_proto::PROTOCOL_VERSION,
            },
        )
        .unwrap(),
    );
    assert!(matches!(
        raw_exchange(&mut stream, &bytes),
        Message::HelloAck { .. }
    ));
    assert_eq!(
        raw_exchange(&mut stream, &ping),
        Message::Response(Response::Pong)
    );
}

#[test]
fn agent_without_arguments_off_pid_1_refuses_to_start() {
    let out = Command::new(agent_exe()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--serve-unix"));
}

/// A session's events until it exits: (stdout, stderr, exit code).
fn run_session(session: &Session, limit: Duration) -> (String, String, i32) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match session.next(Duration::from_millis(100)).unwrap() {
            Some(SessionEvent::Stdout(b)) => out.extend(b),
            Some(SessionEvent::Stderr(b)) => err.extend(b),
            Some(SessionEvent::Exit(code)) => {
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    String::from_utf8_lossy(&err).into_owned(),
                    code,
                )
            }
            None => {}
        }
    }
    panic!(
        "the session did not end within {limit:?}; stdout so far: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// Reads the session's output until it contains `want` (a pty echoes and prompts).
fn wait_for_output(session: &Session, want: &str) -> String {
    let mut out = Vec::new();
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if let Some(SessionEvent::Stdout(b)) = session.next(Duration::from_millis(100)).unwrap() {
            out.extend(b);
            if String::from_utf8_lossy(&out).contains(want) {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
    }
    panic!(
        "no {want:?} in the session's output: {:?}",
        String::from_utf8_lossy(&out)
    );
}

fn client(agent: &Agent) -> AgentClient {
    AgentClient::main(agent.link(), "host-agent", T, agent.liveness())
}

#[test]
fn a_session_on_pipes_gets_its_stdin_and_separates_its_streams() {
    let agent = Agent::start();
    let client = client(&agent);
    let session = client
        .open_session(SessionSpec {
            command: "echo out; echo err >&2; read a; read b; echo \"got $a-$b\"; exit 7".into(),
            pty: None,
            term: String::new(),
        })
        .unwrap();
    session.send(b"one\n").unwrap();
    session.send(b"two\n").unwrap();
    session.close_input().unwrap();
    let (out, err, code) = run_session(&session, T);
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("out\ngot one-two\n", "err\n", 7)
    );
    drop(session);
    // The channel serves calls again once the session ended.
    assert_eq!(client.exec("echo after").unwrap().stdout, b"after\n");
}

#[test]
fn a_session_reads_end_of_input_when_the_host_closes_it() {
    let agent = Agent::start();
    let client = client(&agent);
    let session = client
        .open_session(SessionSpec {
            command: "wc -c".into(),
            pty: None,
            term: String::new(),
        })
        .unwrap();
    // More than one pipe buffer, so the agent has to hold input for the command.
    session.send(&vec![b'x'; 300_000]).unwrap();
    session.close_input().unwrap();
    let (out, _, code) = run_session(&session, T);
    assert_eq!((out.trim(), code), ("300000", 0));
}

#[test]
fn a_pty_session_has_its_size_term_and_a_controlling_terminal() {
    let agent = Agent::start();
    let client = client(&agent);
    let session = client
        .open_session(SessionSpec {
            command: "exec /bin/sh".into(),
            pty: Some((33, 101)),
            term: "vt220".into(),
        })
        .unwrap();
    session
        .send(b"stty size; echo \"T=$TERM\"; tty >/dev/null && echo tty-$((6*7))\n")
        .unwrap();
    // Markers computed by the shell: the terminal echoes the typed line too.
    let seen = wait_for_output(&session, "tty-42");
    assert!(seen.contains("33 101"), "{seen:?}");
    assert!(seen.contains("T=vt220"), "{seen:?}");
    session.resize(40, 120).unwrap();
    session.send(b"stty size\n").unwrap();
    wait_for_output(&session, "40 120\r\n");
    // Ctrl-C reaches the foreground job through the guest's line discipline: the
    // sleep dies by SIGINT, the shell lives on.
    // (A shell abandons the rest of a command line whose job died of SIGINT, so the
    // status is asked on the next line.)
    session.send(b"sleep 30\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    session.send(b"\x03").unwrap();
    session.send(b"echo status=$((0+$?))\n").unwrap();
    wait_for_output(&session, "status=130");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    session.send(b"exit 3\n").unwrap();
    let (_, _, code) = run_session(&session, T);
    assert_eq!(code, 3);
}

#[test]
fn a_pty_session_ends_when_the_terminal_hangs_up() {
    // Before its shell runs too: the leader is signalled by pid, not through the
    // terminal's session (which it may not have taken yet).
    for early in [true, false] {
        pty_hang_up(early);
    }
}

fn pty_hang_up(early: bool) {
    let agent = Agent::start();
    let client = client(&agent);
    let session = client
        .open_session(SessionSpec {
            command: "exec /bin/sh".into(),
            pty: Some((24, 80)),
            term: "xterm".into(),
        })
        .unwrap();
    if !early {
        // A marker the shell computes: the terminal echoes the typed line at once.
        session.send(b"echo ready-$((6*7))\n").unwrap();
        wait_for_output(&session, "ready-42");
    }
    session.hang_up().unwrap();
    let (_, _, code) = run_session(&session, T);
    assert_eq!(code, 128 + 1, "SIGHUP");
}

#[test]
fn dropping_a_session_kills_its_command_and_frees_the_channel() {
    let agent = Agent::start();
    let client = client(&agent);
    let marker = agent.path("session-pid");
    let session = client
        .open_session(SessionSpec {
            command: format!("echo $$ > {marker}; exec sleep 300"),
            pty: None,
            term: String::new(),
        })
        .unwrap();
    let deadline = Instant::now() + T;
    while std::fs::read_to_string(&marker).map_or(true, |s| !s.ends_with('\n')) {
        assert!(Instant::now() < deadline, "the session never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(session);
    let start = Instant::now();
    assert_eq!(client.exec("echo next").unwrap().stdout, b"next\n");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // Signal 0 probes the process.
    let alive = Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(!alive.success(), "the session's command {pid} survived");
}

#[test]
fn a_worker_session_runs_in_the_worker() {
    let agent = Agent::start();
    let client = client(&agent);
    let worker = client.spawn(false).unwrap();
    let session = worker
        .client
        .open_session(SessionSpec {
            command: "echo $PPID".into(),
            pty: None,
            term: String::new(),
        })
        .unwrap();
    let (out, _, code) = run_session(&session, T);
    assert_eq!((out.trim(), code), (worker.pid.to_string().as_str(), 0));
    // A call on the channel while a session holds it is refused, not interleaved.
    let _held = client
        .open_session(SessionSpec {
            command: "sleep 30".into(),
            pty: None,
            term: String::new(),
        })
        .unwrap();
    let err = client.exec("true").unwrap_err();
    assert!(
        err.to_string().contains("held by an interactive session"),
        "{err}"
    );
}
