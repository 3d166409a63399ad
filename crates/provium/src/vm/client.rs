//! The agent client: every operation a test performs in a guest, on one channel of one
//! VM's link (the VM's main channel, or a worker's).
//!
//! [`AgentClient`] holds what travels together on every call — the link, the channel,
//! the subject errors name, the deadline, and the VM's own account of its fate — so
//! callers (the `Vm` handle, workers, the Lua binding, benches) pass one value. Every
//! failure comes back as one [`ClientError`] naming the subject and the operation, and
//! this module alone decides whether a failure means the VM broke, and why.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use provium_proto::{
    AgentError, IoctlPtr, Message, ProtoError, PtrPatch, PtySize, Request, Response, SyscallBuf,
    MAIN_CHANNEL, MAX_DATA, STDERR,
};
use thiserror::Error;

use super::link::{Link, LinkError, LinkStream, Liveness};
use crate::cancel::Stop;

/// How long a lost connection waits for QEMU's own account of why (its exit or a
/// panic line arrive a moment after the socket closes).
pub const EXIT_EVIDENCE_WAIT: Duration = Duration::from_secs(2);

/// Extra time a `job_wait` call gets beyond the wait it asks the agent for; and an
/// `exec` with a limit beyond its limit (the agent kills the command at the limit and
/// answers at once).
const JOB_WAIT_SLACK: Duration = Duration::from_secs(30);

/// A failed agent operation; every variant names its subject (`VM a.lua#1`, or
/// `worker 2 (pid 57) of VM a.lua#1`) and the operation.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The VM can no longer answer: QEMU exited, the kernel panicked, the agent died
    /// or its connection was lost.
    #[error("VM {vm} broke during {op}: {reason}")]
    Broke {
        vm: String,
        op: &'static str,
        reason: String,
    },
    #[error("{subject}: {op}: no answer within {waited:?}")]
    Timeout {
        subject: String,
        op: &'static str,
        waited: Duration,
    },
    /// `exec(cmd, {timeout = ...})` ran past its limit; the guest killed the command.
    #[error("exec timed out after {}: {cmd}", crate::duration::show(*.limit))]
    ExecTimedOut { cmd: String, limit: Duration },
    /// The file waiting for the answer had to stop (its time ran out, the run was
    /// interrupted); a command the agent ran for it was killed.
    #[error("{subject}: {op}: {stop}")]
    Stopped {
        subject: String,
        op: &'static str,
        stop: Stop,
    },
    /// The agent performed the request and it failed (a missing path, an errno).
    #[error("{subject}: {op}: {source}")]
    Agent {
        subject: String,
        op: &'static str,
        #[source]
        source: AgentError,
    },
    /// The worker this client talks to ended (killed, exited, or its process died).
    #[error("{subject}: {op}: the worker is gone: {reason}")]
    WorkerGone {
        subject: String,
        op: &'static str,
        reason: String,
    },
    #[error("{subject}: {op}: guest path '{path}' must be absolute")]
    RelativePath {
        subject: String,
        op: &'static str,
        path: String,
    },
    #[error(
        "{subject}: write_file {path}: {size} bytes exceed the 16 MiB ({MAX_DATA}-byte) limit"
    )]
    TooLarge {
        subject: String,
        path: String,
        size: usize,
    },
    #[error("{subject}: dmesg: invalid pattern {pattern:?}: {source}")]
    Pattern {
        subject: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// Bytes that do not decode: a guest writing garbage on the channel.
    #[error("{subject}: {op}: {source}")]
    Protocol {
        subject: String,
        op: &'static str,
        #[source]
        source: ProtoError,
    },
    #[error("{subject}: {op}: unexpected agent answer {got}")]
    Unexpected {
        subject: String,
        op: &'static str,
        got: String,
    },
}

impl ClientError {
    /// Why the VM can no longer answer, when this error says it cannot. A deadline
    /// passing is not such a sign: the command may just be slow.
    pub fn broke(&self) -> Option<&str> {
        match self {
            ClientError::Broke { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Whether the infrastructure failed (as opposed to the operation the test asked
    /// for): such a failure makes the test's outcome `error`, not `failed`.
    pub fn is_infrastructure(&self) -> bool {
        matches!(
            self,
            ClientError::Broke { .. }
                | ClientError::Timeout { .. }
                | ClientError::Protocol { .. }
                | ClientError::Unexpected { .. }
        )
    }

    /// The agent's own error, when the agent answered with one.
    pub fn agent_error(&self) -> Option<&AgentError> {
        match self {
            ClientError::Agent { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Guest paths are absolute everywhere (`files` keys, transfers): one rule, checked
/// before anything is sent.
pub fn check_guest_path(path: &str) -> Result<(), String> {
    if Path::new(path).is_absolute() {
        Ok(())
    } else {
        Err(format!("guest path '{path}' must be absolute"))
    }
}

/// The result of `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// 128+n when the command died from signal n.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn ok(&self) -> bool {
        self.exit_code == 0
    }
}

/// What a syscall-shaped request (`syscall*`, `ioctl_buf`) answered: the raw result,
/// the argument buffers after the call in argument order, the output sub-buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallOutcome {
    pub ret: i64,
    pub bufs: Vec<Vec<u8>>,
    pub outputs: Vec<Vec<u8>>,
}

/// A raw syscall: integer arguments, buffers that replace some of them, and pointers
/// patched inside those buffers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyscallCall {
    pub nr: i64,
    pub args: Vec<u64>,
    pub bufs: Vec<SyscallBuf>,
    pub ptrs: Vec<PtrPatch>,
}

/// A background job the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub pid: i32,
}

/// A job's state as `job_wait`/`job_kill` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub running: bool,
    /// -1 while running.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A worker the agent started: its own process (or thread) and channel.
#[derive(Debug, Clone)]
pub struct Worker {
    pub client: AgentClient,
    pub channel: u32,
    pub pid: i32,
    pub thread: bool,
}

/// One channel of one VM's agent link. Cheap to clone (the link is shared).
#[derive(Clone)]
pub struct AgentClient {
    link: Link,
    channel: u32,
    vm: Arc<str>,
    subject: Arc<str>,
    op_timeout: Duration,
    liveness: Liveness,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("subject", &self.subject)
            .field("channel", &self.channel)
            .finish()
    }
}

impl AgentClient {
    /// The client of a VM's main channel. `liveness` is QEMU's account of the VM
    /// (exited, panicked, agent died), asked when a call fails.
    pub fn main(link: Link, vm: &str, op_timeout: Duration, liveness: Liveness) -> AgentClient {
        AgentClient {
            link,
            channel: MAIN_CHANNEL,
            vm: Arc::from(vm),
            subject: Arc::from(format!("VM {vm}")),
            op_timeout,
            liveness,
        }
    }

    /// Who errors name: `VM a.lua#1` or `worker 2 (pid 57) of VM a.lua#1`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The VM's name.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    pub fn channel(&self) -> u32 {
        self.channel
    }

    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The link under this client (shared by the VM's every channel).
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Sends `request` and waits up to the operation deadline for its answer.
    pub fn call(&self, request: &Request) -> Result<Response, ClientError> {
        self.call_within(request, self.op_timeout)
    }

    /// Sends `request` followed by `upload` in `Data` frames, and waits up to the
    /// operation deadline for its answer and the data the agent sends before it.
    pub fn call_with_data(
        &self,
        request: &Request,
        upload: &[u8],
    ) -> Result<(Response, Vec<u8>), ClientError> {
        let op = request.op_name();
        self.link
            .call_with_data(self.channel, request, upload, self.op_timeout)
            .map_err(|error| self.explain(op, error))
    }

    /// Sends `request` and waits up to `timeout` for its answer.
    pub fn call_within(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let op = request.op_name();
        self.link
            .call(self.channel, request, timeout)
            .map_err(|error| self.explain(op, error))
    }

    /// The one place a failed exchange is judged: a lost connection is explained by
    /// the VM's fate when QEMU gives its account within [`EXIT_EVIDENCE_WAIT`].
    fn explain(&self, op: &'static str, error: LinkError) -> ClientError {
        let subject = self.subject.to_string();
        let broke = |reason: String| ClientError::Broke {
            vm: self.vm.to_string(),
            op,
            reason,
        };
        match error {
            LinkError::Timeout { waited, .. } => ClientError::Timeout {
                subject,
                op,
                waited,
            },
            LinkError::VmDead { reason, .. } => broke(reason),
            LinkError::Cancelled { stop, .. } => ClientError::Stopped { subject, op, stop },
            LinkError::Disconnected { reason, .. } => {
                // A lost connection usually means QEMU is exiting, and its stdout
                // (which carries the reason, e.g. a panic) closes a moment after the
                // socket: wait briefly for that better evidence.
                let deadline = Instant::now() + EXIT_EVIDENCE_WAIT;
                loop {
                    if let Some(fate) = (self.liveness)() {
                        break broke(fate);
                    }
                    if Instant::now() >= deadline {
                        break broke(format!("agent connection lost: {reason}"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            LinkError::Agent {
                source: AgentError::WorkerGone { reason, .. },
                ..
            } => ClientError::WorkerGone {
                subject,
                op,
                reason,
            },
            LinkError::Agent { source, .. } => ClientError::Agent {
                subject,
                op,
                source,
            },
            LinkError::Protocol { source, .. } => ClientError::Protocol {
                subject,
                op,
                source,
            },
            LinkError::Unexpected { got, .. } => ClientError::Unexpected { subject, op, got },
            other @ (LinkError::Io { .. }
            | LinkError::HandshakeTimeout { .. }
            | LinkError::VersionMismatch { .. }) => broke(other.to_string()),
        }
    }

    fn unexpected(&self, op: &'static str, got: Response) -> ClientError {
        ClientError::Unexpected {
            subject: self.subject.to_string(),
            op,
            got: format!("{got:?}").chars().take(200).collect(),
        }
    }

    fn guest_path(&self, op: &'static str, path: &str) -> Result<(), ClientError> {
        check_guest_path(path).map_err(|_| ClientError::RelativePath {
            subject: self.subject.to_string(),
            op,
            path: path.to_string(),
        })
    }

    /// Runs `cmd` with `/bin/sh -c`; a non-zero exit is a result, not an error. The
    /// agent kills the command when the operation deadline passes, as the host gives
    /// up then.
    pub fn exec(&self, cmd: &str) -> Result<ExecOutput, ClientError> {
        self.exec_for(cmd, self.op_timeout, self.op_timeout)
    }

    /// Runs `cmd`, killed in the guest (its whole process group) after `limit`; the
    /// call then fails with [`ClientError::ExecTimedOut`] and the VM stays usable.
    pub fn exec_within(&self, cmd: &str, limit: Duration) -> Result<ExecOutput, ClientError> {
        let waited = limit + JOB_WAIT_SLACK;
        match self.exec_for(cmd, limit, waited) {
            Err(ClientError::Agent {
                source: AgentError::CommandTimedOut { .. },
                ..
            }) => Err(ClientError::ExecTimedOut {
                cmd: cmd.to_string(),
                limit,
            }),
            other => other,
        }
    }

    fn exec_for(
        &self,
        cmd: &str,
        limit: Duration,
        waited: Duration,
    ) -> Result<ExecOutput, ClientError> {
        let request = Request::Exec {
            cmd: cmd.to_string(),
            timeout_ms: limit.as_millis().try_into().unwrap_or(u64::MAX).max(1),
        };
        match self.call_within(&request, waited)? {
            Response::Exec {
                exit_code,
                stdout,
                stderr,
            } => Ok(ExecOutput {
                exit_code,
                stdout,
                stderr,
            }),
            other => Err(self.unexpected("exec", other)),
        }
    }

    /// The file's contents (at most 16 MiB), which the agent streams in chunks.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.guest_path("read_file", path)?;
        let request = Request::ReadFile {
            path: path.to_string(),
        };
        match self.call_with_data(&request, &[])? {
            (Response::File { size }, data) if size == data.len() as u64 => Ok(data),
            (Response::File { size }, data) => Err(ClientError::Unexpected {
                subject: self.subject.to_string(),
                op: "read_file",
                got: format!(
                    "{} bytes of {path} where the agent counted {size}",
                    data.len()
                ),
            }),
            (other, _) => Err(self.unexpected("read_file", other)),
        }
    }

    /// Creates or truncates `path` (mode 0644) with `data` (at most 16 MiB), streamed
    /// to the agent in chunks.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<(), ClientError> {
        self.guest_path("write_file", path)?;
        if data.len() > MAX_DATA as usize {
            return Err(ClientError::TooLarge {
                subject: self.subject.to_string(),
                path: path.to_string(),
                size: data.len(),
            });
        }
        let request = Request::WriteFile {
            path: path.to_string(),
            size: data.len() as u64,
            mode: None,
        };
        match self.call_with_data(&request, data)? {
            (Response::Done, _) => Ok(()),
            (other, _) => Err(self.unexpected("write_file", other)),
        }
    }

    /// The kernel log; with `pattern` (a regular expression), only matching lines.
    pub fn dmesg(&self, pattern: Option<&str>) -> Result<String, ClientError> {
        let filter = pattern
            .map(|p| {
                regex::Regex::new(p).map_err(|source| ClientError::Pattern {
                    subject: self.subject.to_string(),
                    pattern: p.to_string(),
                    source,
                })
            })
            .transpose()?;
        let log = match self.call(&Request::Dmesg)? {
            Response::Dmesg { log } => String::from_utf8_lossy(&log).into_owned(),
            other => return Err(self.unexpected("dmesg", other)),
        };
        Ok(match filter {
            None => log,
            Some(re) => log
                .lines()
                .filter(|line| re.is_match(line))
                .map(|line| format!("{line}\n"))
                .collect(),
        })
    }

    /// Mounts proc, sysfs, securityfs and devtmpfs where missing (idempotent).
    pub fn mount_vfs(&self) -> Result<(), ClientError> {
        match self.call(&Request::MountVfs)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected("mount_vfs", other)),
        }
    }

    /// A raw syscall with buffers and patched pointers.
    pub fn syscall(&self, call: SyscallCall) -> Result<SyscallOutcome, ClientError> {
        let request = Request::Syscall {
            nr: call.nr,
            args: call.args,
            bufs: call.bufs,
            ptrs: call.ptrs,
        };
        self.syscall_shaped(&request)
    }

    /// `ioctl(fd, cmd, data?)`: the result, and the argument bytes after the call when
    /// the command reads (or encodes no direction).
    pub fn ioctl(
        &self,
        fd: i32,
        cmd: u64,
        data: Option<Vec<u8>>,
    ) -> Result<(i64, Option<Vec<u8>>), ClientError> {
        match self.call(&Request::Ioctl { fd, cmd, data })? {
            Response::Ioctl { ret, data } => Ok((ret, data)),
            other => Err(self.unexpected("ioctl", other)),
        }
    }

    /// `ioctl(fd, cmd, &arg)` with pointers patched into `arg`.
    pub fn ioctl_buf(
        &self,
        fd: i32,
        cmd: u64,
        arg: Vec<u8>,
        ptrs: Vec<IoctlPtr>,
    ) -> Result<SyscallOutcome, ClientError> {
        self.syscall_shaped(&Request::IoctlBuf { fd, cmd, arg, ptrs })
    }

    fn syscall_shaped(&self, request: &Request) -> Result<SyscallOutcome, ClientError> {
        match self.call(request)? {
            Response::Syscall { ret, bufs, outputs } => Ok(SyscallOutcome { ret, bufs, outputs }),
            other => Err(self.unexpected(request.op_name(), other)),
        }
    }

    /// Starts `cmd` asynchronously.
    pub fn background(&self, cmd: &str) -> Result<Job, ClientError> {
        let request = Request::Background {
            cmd: cmd.to_string(),
        };
        match self.call(&request)? {
            Response::Job { id, pid } => Ok(Job { id, pid }),
            other => Err(self.unexpected("background", other)),
        }
    }

    /// Waits up to `wait` (zero: poll) for job `id`.
    pub fn job_wait(&self, id: u64, wait: Duration) -> Result<JobStatus, ClientError> {
        let request = Request::JobWait {
            id,
            timeout_ms: wait.as_millis().try_into().unwrap_or(u64::MAX),
        };
        self.job_status(&request, wait + JOB_WAIT_SLACK)
    }

    /// Kills job `id`'s process group and returns its final result.
    pub fn job_kill(&self, id: u64) -> Result<JobStatus, ClientError> {
        self.job_status(&Request::JobKill { id }, self.op_timeout)
    }

    fn job_status(&self, request: &Request, timeout: Duration) -> Result<JobStatus, ClientError> {
        match self.call_within(request, timeout)? {
            Response::JobStatus {
                running,
                exit_code,
                stdout,
                stderr,
            } => Ok(JobStatus {
                running,
                exit_code,
                stdout,
                stderr,
            }),
            other => Err(self.unexpected(request.op_name(), other)),
        }
    }

    /// Starts a worker (a forked agent process, or with `thread` a clone(CLONE_THREAD)
    /// thread) with its own channel; its client names it in errors.
    pub fn spawn(&self, thread: bool) -> Result<Worker, ClientError> {
        match self.call(&Request::Spawn { thread })? {
            Response::Spawned { channel, pid } => {
                let kind = if thread { "thread" } else { "pid" };
                let client = AgentClient {
                    channel,
                    subject: Arc::from(format!(
                        "worker {channel} ({kind} {pid}) of VM {}",
                        self.vm
                    )),
                    ..self.clone()
                };
                Ok(Worker {
                    client,
                    channel,
                    pid,
                    thread,
                })
            }
            other => Err(self.unexpected("spawn", other)),
        }
    }

    /// Ends the worker serving `channel` (asked on the main channel).
    pub fn worker_kill(&self, channel: u32) -> Result<(), ClientError> {
        match self.call(&Request::WorkerKill { channel })? {
            Response::Done => Ok(()),
            other => Err(self.unexpected("worker_kill", other)),
        }
    }

    /// Asks the agent to stop reading until the next `Hello` (before a snapshot).
    pub fn quiesce(&self, timeout: Duration) -> Result<(), ClientError> {
        match self.call_within(&Request::Quiesce, timeout)? {
            Response::Quiesced => Ok(()),
            other => Err(self.unexpected("quiesce", other)),
        }
    }

    /// Asks the guest to sync and power off. The agent may power off before its
    /// answer leaves the guest, so a lost connection is the expected outcome and the
    /// result is not reported; the caller watches QEMU exit.
    pub fn request_poweroff(&self, timeout: Duration) {
        let _ = self.link.call(self.channel, &Request::Shutdown, timeout);
    }

    /// A liveness round trip.
    pub fn ping(&self) -> Result<(), ClientError> {
        match self.call(&Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(self.unexpected("ping", other)),
        }
    }

    /// Starts an interactive session on this client's channel (the VM's main channel,
    /// or a worker's, whose process the command then descends from); the channel
    /// takes no other call until the session ends.
    pub fn open_session(&self, spec: SessionSpec) -> Result<Session, ClientError> {
        let request = Request::Session {
            command: spec.command,
            pty: spec.pty.map(|(rows, cols)| PtySize { rows, cols }),
            term: spec.term,
        };
        let stream = self
            .link
            .open_stream(self.channel, &request, self.op_timeout)
            .map_err(|error| self.explain("session", error))?;
        Ok(Session {
            client: self.clone(),
            stream: std::cell::RefCell::new(stream),
        })
    }

    /// The error for a session (or any wait of this client's) that ended because the
    /// caller had to stop.
    pub fn stopped(&self, stop: Stop) -> ClientError {
        ClientError::Stopped {
            subject: self.subject.to_string(),
            op: "session",
            stop,
        }
    }
}

/// What [`AgentClient::open_session`] starts: `command` with `/bin/sh -c`, on a
/// pseudo-terminal of `pty` = (rows, columns) whose `TERM` is `term`, or on pipes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub command: String,
    pub pty: Option<(u16, u16)>,
    pub term: String,
}

/// What a session's command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// It exited with this status (128+n for signal n), all of its output sent.
    Exit(i32),
}

/// An interactive session in the guest (docs/protocol.md, "Sessions"). Dropping it
/// before its command exited kills the command's process group.
pub struct Session {
    client: AgentClient,
    stream: std::cell::RefCell<LinkStream>,
}

impl Session {
    /// Sends input: bytes for the terminal, or for the command's stdin.
    pub fn send(&self, bytes: &[u8]) -> Result<(), ClientError> {
        for piece in bytes.chunks(provium_proto::UART_DATA_CHUNK) {
            self.message(&Message::Input {
                bytes: piece.to_vec(),
            })?;
        }
        Ok(())
    }

    /// The local terminal changed size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.message(&Message::Resize { rows, cols })
    }

    /// The command's stdin ends (pipes).
    pub fn close_input(&self) -> Result<(), ClientError> {
        self.message(&Message::Input { bytes: Vec::new() })
    }

    /// The terminal hangs up: the guest's shell gets SIGHUP (pty).
    pub fn hang_up(&self) -> Result<(), ClientError> {
        self.close_input()
    }

    fn message(&self, message: &Message) -> Result<(), ClientError> {
        self.stream
            .borrow()
            .send(message)
            .map_err(|error| self.client.explain("session", error))
    }

    /// What the command did next, waiting up to `wait`; `None` when nothing happened.
    pub fn next(&self, wait: Duration) -> Result<Option<SessionEvent>, ClientError> {
        let message = self
            .stream
            .borrow_mut()
            .next(wait)
            .map_err(|error| self.client.explain("session", error))?;
        Ok(match message {
            None => None,
            Some(Message::Output { stream, bytes }) if stream == STDERR => {
                Some(SessionEvent::Stderr(bytes))
            }
            Some(Message::Output { bytes, .. }) => Some(SessionEvent::Stdout(bytes)),
            Some(Message::Response(Response::SessionEnded { exit_code })) => {
                Some(SessionEvent::Exit(exit_code))
            }
            Some(other) => {
                return Err(ClientError::Unexpected {
                    subject: self.client.subject.to_string(),
                    op: "session",
                    got: format!("{other:?}").chars().take(200).collect(),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provium_proto::{encode_message, FrameReader, Message, PROTOCOL_VERSION};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A scripted agent answering each request through `answer`.
    fn agent(answer: impl Fn(&Request) -> Option<Response> + Send + 'static) -> UnixStream {
        let (host, mut guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut reader = FrameReader::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = match guest.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                reader.push(&buf[..n]);
                while let Ok(Some(frame)) = reader.next_frame() {
                    let reply = match frame.message().unwrap() {
                        Message::Hello { .. } => Some(Message::HelloAck {
                            version: PROTOCOL_VERSION,
                        }),
                        Message::Request(req) => answer(&req).map(Message::Response),
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        let out = encode_message(frame.channel, frame.seq, &reply).unwrap();
                        if guest.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        host
    }

    fn client(stream: UnixStream, liveness: Liveness) -> AgentClient {
        let link = Link::connect(
            "t.lua#1",
            stream,
            Arc::clone(&liveness),
            Duration::from_secs(5),
        )
        .unwrap();
        AgentClient::main(link, "t.lua#1", Duration::from_secs(5), liveness)
    }

    fn alive() -> Liveness {
        Arc::new(|| None)
    }

    #[test]
    fn agent_errors_name_the_vm_the_operation_and_the_errno_not_the_channel() {
        let client = client(
            agent(|req| match req {
                Request::WriteFile { path, .. } => Some(Response::Error(AgentError::Path {
                    op: "open".into(),
                    path: path.clone(),
                    errno: 2,
                })),
                _ => None,
            }),
            alive(),
        );
        let error = client.write_file("/no-dir/x", b"data").unwrap_err();
        assert_eq!(
            error.to_string(),
            "VM t.lua#1: write_file: open /no-dir/x: ENOENT (errno 2)"
        );
        assert!(!error.is_infrastructure());
        assert_eq!(error.agent_error().and_then(AgentError::errno), Some(2));
    }

    #[test]
    fn relative_guest_paths_and_oversize_writes_are_refused_before_sending() {
        let client = client(agent(|_| unreachable!("nothing is sent")), alive());
        assert_eq!(
            client.write_file("tmp/x", b"").unwrap_err().to_string(),
            "VM t.lua#1: write_file: guest path 'tmp/x' must be absolute"
        );
        assert_eq!(
            client.read_file("x").unwrap_err().to_string(),
            "VM t.lua#1: read_file: guest path 'x' must be absolute"
        );
        let big = vec![0u8; MAX_DATA as usize + 1];
        assert!(client
            .write_file("/x", &big)
            .unwrap_err()
            .to_string()
            .contains("exceed the 16 MiB"));
        assert!(client
            .dmesg(Some("("))
            .unwrap_err()
            .to_string()
            .starts_with("VM t.lua#1: dmesg: invalid pattern \"(\""));
    }

    #[test]
    fn a_dead_vm_is_an_infrastructure_failure_named_as_such() {
        let dead = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&dead);
        let liveness: Liveness = Arc::new(move || {
            flag.load(Ordering::SeqCst)
                .then(|| "the kernel panicked: Kernel panic - not syncing: boom".to_string())
        });
        let client = client(agent(|_| None), liveness);
        dead.store(true, Ordering::SeqCst);
        let error = client.exec("true").unwrap_err();
        assert_eq!(
            error.to_string(),
            "VM t.lua#1 broke during exec: the kernel panicked: Kernel panic - not syncing: boom"
        );
        assert!(error.is_infrastructure());
        assert_eq!(
            error.broke(),
            Some("the kernel panicked: Kernel panic - not syncing: boom")
        );
    }

    #[test]
    fn workers_are_named_by_number_and_pid() {
        let main = client(
            agent(|req| match req {
                Request::Spawn { thread } => Some(Response::Spawned {
                    channel: 2,
                    pid: if *thread { 9 } else { 57 },
                }),
                Request::ReadFile { .. } => Some(Response::Error(AgentError::WorkerGone {
                    channel: 2,
                    reason: "killed".into(),
                })),
                _ => None,
            }),
            alive(),
        );
        let worker = main.spawn(false).unwrap();
        assert_eq!(worker.client.subject(), "worker 2 (pid 57) of VM t.lua#1");
        assert_eq!(worker.client.channel(), 2);
        let thread = main.spawn(true).unwrap();
        assert_eq!(thread.client.subject(), "worker 2 (thread 9) of VM t.lua#1");
        assert_eq!(
            worker.client.read_file("/x").unwrap_err().to_string(),
            "worker 2 (pid 57) of VM t.lua#1: read_file: the worker is gone: killed"
        );
    }
}
