//! QMP client: the QEMU Machine Protocol over a unix socket.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;

/// How long to sleep between connection attempts while QEMU sets up the socket: a
/// resume waits on this connection first, and QEMU's start takes 30-70 ms, so a short
/// poll (a failed connect is one cheap syscall) keeps the resume from waiting longer.
const CONNECT_RETRY: Duration = Duration::from_millis(2);

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("QMP socket {path}: QEMU did not accept a connection within {waited:?}: {last_error}")]
    Connect {
        path: PathBuf,
        waited: Duration,
        last_error: io::Error,
    },
    #[error("QMP socket {path}: QEMU exited before accepting a connection")]
    QemuGone { path: PathBuf },
    #[error("QMP {path}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: String,
        source: io::Error,
    },
    #[error("QMP {path}: timed out after {timeout:?} waiting for {what}")]
    Timeout {
        path: PathBuf,
        what: String,
        timeout: Duration,
    },
    #[error("QMP {path}: QEMU closed the connection while waiting for {what}")]
    Closed { path: PathBuf, what: String },
    #[error("QMP {path}: unexpected message {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("QMP {path}: command '{command}' failed: {class}: {desc}")]
    Command {
        path: PathBuf,
        command: String,
        class: String,
        desc: String,
    },
}

/// One line QEMU sends, classified. Parsing is kept apart from the socket so that it
/// can be tested and fuzzed alone (`fuzz/`, target `qmp`).
#[derive(Debug, Clone, PartialEq)]
pub enum QmpMessage {
    /// `{"QMP": {...}}`, the first line of a session.
    Greeting(Value),
    /// `{"return": value}`: a command succeeded.
    Return(Value),
    /// `{"error": {"class": ..., "desc": ...}}`: a command failed. A missing or
    /// non-string field reads as empty.
    Error { class: String, desc: String },
    /// `{"event": "NAME", ...}`: the whole object, kept for `wait_event`.
    Event { name: String, message: Value },
}

impl QmpMessage {
    /// Parses one line (its newline and surrounding blanks allowed). `None` when it
    /// is not JSON or none of the above; the caller reports the line itself. A line
    /// with several keys is taken as the first of return, error, event, greeting.
    pub fn parse(line: &str) -> Option<QmpMessage> {
        let message: Value = serde_json::from_str(line.trim()).ok()?;
        if let Some(value) = message.get("return") {
            return Some(QmpMessage::Return(value.clone()));
        }
        if let Some(error) = message.get("error") {
            let field = |name: &str| {
                error
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            return Some(QmpMessage::Error {
                class: field("class"),
                desc: field("desc"),
            });
        }
        if let Some(name) = message.get("event").and_then(Value::as_str) {
            return Some(QmpMessage::Event {
                name: name.to_string(),
                message,
            });
        }
        if message.get("QMP").is_some() {
            return Some(QmpMessage::Greeting(message));
        }
        None
    }
}

/// A connected QMP session in command mode.
pub struct Qmp {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    /// Events received while waiting for command replies, oldest first.
    events: VecDeque<Value>,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, retrying until `timeout`: the socket file can
    /// exist before QEMU listens on it. `alive` is polled between attempts so a QEMU
    /// that exits ends the wait at once.
    pub fn connect(
        path: &Path,
        timeout: Duration,
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<Qmp, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(last_error) => {
                    if !alive() {
                        return Err(QmpError::QemuGone {
                            path: path.to_path_buf(),
                        });
                    }
                    if start.elapsed() >= timeout {
                        return Err(QmpError::Connect {
                            path: path.to_path_buf(),
                            waited: start.elapsed(),
                            last_error,
                        });
                    }
                    std::thread::sleep(CONNECT_RETRY);
                }
            }
        };
        let reader = stream.try_clone().map_err(|source| QmpError::Io {
            path: path.to_path_buf(),
            context: "clone socket".into(),
            source,
        })?;
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            writer: stream,
            reader: BufReader::new(reader),
            events: VecDeque::new(),
        };
        let greeting = qmp.read_message(start + timeout, timeout, "the QMP greeting")?;
        if !matches!(greeting, QmpMessage::Greeting(_)) {
            return Err(qmp.protocol(&greeting));
        }
        qmp.execute(
            "qmp_capabilities",
            None,
            timeout.saturating_sub(start.elapsed()),
        )?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io(format!("send '{command}'"), source))?;
        self.reply(command, deadline, timeout)
    }

    /// Runs `command` with `fd` attached (SCM_RIGHTS) to its bytes, as `getfd` and
    /// `add-fd` require: QEMU takes the descriptor that arrived with the command.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        let sent = send_with_fd(&self.writer, line.as_bytes(), fd.as_raw_fd())
            .map_err(|source| self.io(format!("send '{command}' with a descriptor"), source))?;
        self.writer
            .write_all(&line.as_bytes()[sent..])
            .map_err(|source| self.io(format!("send '{command}'"), source))?;
        self.reply(command, deadline, timeout)
    }

    fn reply(
        &mut self,
        command: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let what = format!("the reply to '{command}'");
        loop {
            match self.read_message(deadline, timeout, &what)? {
                QmpMessage::Return(value) => return Ok(value),
                QmpMessage::Error { class, desc } => {
                    return Err(QmpError::Command {
                        path: self.path.clone(),
                        command: command.to_string(),
                        class,
                        desc,
                    })
                }
                QmpMessage::Event { message, .. } => self.events.push_back(message),
                other => return Err(self.protocol(&other)),
            }
        }
    }

    /// Waits for the next event named `name` (earlier queued events of other names
    /// are kept) and returns the whole event object.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        if let Some(at) = self
            .events
            .iter()
            .position(|e| e.get("event").and_then(Value::as_str) == Some(name))
        {
            return Ok(self.events.remove(at).expect("index from position"));
        }
        let deadline = Instant::now() + timeout;
        let what = format!("event {name}");
        loop {
            match self.read_message(deadline, timeout, &what)? {
                QmpMessage::Event {
                    name: event,
                    message,
                } if event == name => return Ok(message),
                QmpMessage::Event { message, .. } => self.events.push_back(message),
                other => return Err(self.protocol(&other)),
            }
        }
    }

    /// Drains and returns the events received so far.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// Asks QEMU to exit. QEMU may close the socket before replying, which counts as success.
    pub fn quit(&mut self, timeout: Duration) -> Result<(), QmpError> {
        match self.execute("quit", None, timeout) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn read_message(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        what: &str,
    ) -> Result<QmpMessage, QmpError> {
        let mut line = String::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: what.to_string(),
                    timeout,
                });
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(remaining))
                .map_err(|source| self.io("set read timeout".into(), source))?;
            match self.reader.read_line(&mut line) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                        what: what.to_string(),
                    })
                }
                Ok(_) if line.ends_with('\n') => break,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io(format!("read {what}"), source)),
            }
        }
        QmpMessage::parse(&line).ok_or_else(|| QmpError::Protocol {
            path: self.path.clone(),
            message: line.trim().to_string(),
        })
    }

    fn io(&self, context: String, source: io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            context,
            source,
        }
    }

    fn protocol(&self, message: &QmpMessage) -> QmpError {
        let message = match message {
            QmpMessage::Greeting(value) => value.to_string(),
            QmpMessage::Return(value) => json!({ "return": value }).to_string(),
            QmpMessage::Event { message, .. } => message.to_string(),
            QmpMessage::Error { class, desc } => format!("error {class}: {desc}"),
        };
        QmpError::Protocol {
            path: self.path.clone(),
            message,
        }
    }
}

/// Sends the first part of `bytes` with `fd` as ancillary data; returns how many
/// bytes went out (the rest is plain data, the descriptor travels with the first).
fn send_with_fd(socket: &UnixStream, bytes: &[u8], fd: RawFd) -> io::Result<usize> {
    let fds = [fd];
    let fds_len = std::mem::size_of_val(&fds);
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fds_len as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` writable bytes, enough for one header
    // holding `fds`, so CMSG_FIRSTHDR is non-null and CMSG_DATA is in bounds.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(fds_len as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(header), fds_len);
    }
    loop {
        // SAFETY: msg and everything it points to outlive the call.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: sends the greeting, then answers each line from `replies`.
    fn fake_qemu(path: &Path, replies: Vec<&'static str>) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            writer
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut received = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                received.push(line.trim().to_string());
                writer.write_all(reply.as_bytes()).unwrap();
            }
            received
        })
    }

    #[test]
    fn handshake_commands_errors_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let server = fake_qemu(
            &path,
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\"}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such thing\"}}\n",
            ],
        );
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5), &mut || true).unwrap();
        let status = qmp
            .execute("query-status", None, Duration::from_secs(5))
            .unwrap();
        assert_eq!(status["status"], "paused");
        let err = qmp
            .execute("bogus", Some(json!({"x": 1})), Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'bogus' failed: GenericError: no such thing"),
            "{err}"
        );
        let stop = qmp.wait_event("STOP", Duration::from_secs(1)).unwrap();
        assert_eq!(stop["event"], "STOP");
        let received = server.join().unwrap();
        assert_eq!(received[0], r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(received[2], r#"{"arguments":{"x":1},"execute":"bogus"}"#);
    }

    #[test]
    fn lines_parse_into_their_kind() {
        let greeting = r#"{"QMP": {"version": {"qemu": {"major": 10}}, "capabilities": ["oob"]}}"#;
        assert_eq!(
            QmpMessage::parse(greeting),
            Some(QmpMessage::Greeting(
                serde_json::from_str(greeting).unwrap()
            ))
        );
        assert_eq!(
            QmpMessage::parse("{\"return\": {\"status\": \"paused\"}}\r\n"),
            Some(QmpMessage::Return(json!({"status": "paused"})))
        );
        assert_eq!(
            QmpMessage::parse(r#"{"error": {"class": "GenericError", "desc": "no"}, "id": 1}"#),
            Some(QmpMessage::Error {
                class: "GenericError".into(),
                desc: "no".into()
            })
        );
        assert_eq!(
            QmpMessage::parse(r#"{"error": {"class": 7}}"#),
            Some(QmpMessage::Error {
                class: String::new(),
                desc: String::new()
            })
        );
        let event = r#"{"event": "MIGRATION", "data": {"status": "completed"}, "timestamp": {"seconds": 1, "microseconds": 2}}"#;
        assert_eq!(
            QmpMessage::parse(event),
            Some(QmpMessage::Event {
                name: "MIGRATION".into(),
                message: serde_json::from_str(event).unwrap()
            })
        );
    }

    #[test]
    fn lines_of_no_known_kind_are_none() {
        for line in [
            "",
            "\n",
            "not json",
            "{\"return\": ",
            "[]",
            "42",
            "{}",
            r#"{"event": 5}"#,
            r#"{"execute": "quit"}"#,
        ] {
            assert_eq!(QmpMessage::parse(line), None, "{line:?}");
        }
        // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
        let deep = format!(
            "{{\"return\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(QmpMessage::parse(&deep), None);
    }

    #[test]
    fn connect_gives_up_when_qemu_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let start = Instant::now();
        let err = Qmp::connect(&path, Duration::from_secs(10), &mut || false)
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::QemuGone { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
        let err = Qmp::connect(&path, Duration::from_millis(100), &mut || true)
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    }

    #[test]
    fn silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let err = Qmp::connect(&path, Duration::from_millis(300), &mut || true)
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_descriptor_travels_with_the_command_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"passed along").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let line = b"{\"execute\":\"getfd\"}\n";
        let sent = send_with_fd(&ours, line, file.as_raw_fd()).unwrap();
        assert_eq!(sent, line.len());

        let mut data = [0u8; 64];
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: the buffers outlive the call; zeroed msghdr is valid.
        let (got, fd) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&control);
            let got = libc::recvmsg(theirs.as_raw_fd(), &mut msg, 0);
            let header = libc::CMSG_FIRSTHDR(&msg);
            assert!(!header.is_null(), "no descriptor arrived");
            assert_eq!((*header).cmsg_type, libc::SCM_RIGHTS);
            let mut fd: RawFd = -1;
            std::ptr::copy_nonoverlapping(
                libc::CMSG_DATA(header),
                &mut fd as *mut RawFd as *mut u8,
                std::mem::size_of::<RawFd>(),
            );
            (got, fd)
        };
        assert_eq!(&data[..got as usize], line);
        // SAFETY: the descriptor was just received and is owned by nobody else.
        let mut received = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut received, &mut text).unwrap();
        assert_eq!(text, "passed along");
    }
}
