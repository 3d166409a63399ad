//! Shell commands: `exec` (run to completion, output captured concurrently) and
//! background jobs. Each command gets its own session and process group, so an
//! over-long output can be stopped by killing the group, and a grandchild left
//! running in the background does not hold the call open: the call ends when the
//! shell itself exits.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use provium_proto::{AgentError, Response, MAX_DATA};

use crate::sys;

/// A started shell: its pid (also its process group) and the read ends of its output.
struct Shell {
    pid: i32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    exited: OwnedFd,
}

fn spawn_shell(cmd: &str, op: &str) -> Result<Shell, AgentError> {
    let sh = sys::cstring("/bin/sh", op, "shell path")?;
    let argv0 = sys::cstring("sh", op, "shell name")?;
    let dash_c = sys::cstring("-c", op, "shell flag")?;
    let command = sys::cstring(cmd, op, "command")?;
    let argv = [
        argv0.as_ptr(),
        dash_c.as_ptr(),
        command.as_ptr(),
        std::ptr::null(),
    ];
    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    // An empty pipe as stdin reads as end-of-file, like /dev/null, without needing
    // /dev to be populated.
    let (in_r, in_w) = sys::pipe()?;
    drop(in_w);
    let failure = b"provium-agent: cannot execute /bin/sh\n";
    // SAFETY: the child makes only async-signal-safe calls on memory prepared before
    // the fork (the C strings, `argv`, `failure`), so locks other threads held at
    // the fork do not matter; it ends in exec or `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys::os_error("fork"));
    }
    if pid == 0 {
        // SAFETY: as above (the child between fork and exec).
        unsafe {
            libc::setsid();
            libc::dup2(in_r.as_raw_fd(), 0);
            libc::dup2(out_w.as_raw_fd(), 1);
            libc::dup2(err_w.as_raw_fd(), 2);
            sys::child_signal_defaults(&[libc::SIGPIPE]);
            libc::execv(sh.as_ptr(), argv.as_ptr());
            libc::write(2, failure.as_ptr().cast(), failure.len());
            libc::_exit(127);
        }
    }
    // SAFETY: pidfd_open takes no pointers; `pid` is our unreaped child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        let err = sys::os_error("pidfd_open");
        kill_group(pid);
        let _ = sys::wait_pid(pid);
        return Err(err);
    }
    Ok(Shell {
        pid,
        stdout: out_r,
        stderr: err_r,
        // SAFETY: pidfd_open succeeded; the new descriptor has no other owner.
        exited: unsafe { OwnedFd::from_raw_fd(pidfd) },
    })
}

/// SIGKILLs a command's process group, and the shell itself in case it has not yet
/// called `setsid` (then the group does not exist yet).
fn kill_group(pid: i32) {
    // SAFETY: kill takes no pointers and touches no memory of ours.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A descriptor `exec` watches while the command runs: the channel's socket, on which
/// the host may cancel the request. `readable` is called when it has data and says
/// whether the request was cancelled.
pub struct Watch<'a> {
    pub fd: i32,
    pub readable: &'a mut dyn FnMut() -> bool,
}

/// Why a command was stopped before it exited by itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Sink,
    Deadline,
    Cancelled,
}

/// Pumps the shell's output into `sink` until the shell exits, then takes what is
/// already buffered in the pipes and reaps it. `sink` returns false to stop early; the
/// group is also killed at `deadline` and when `watch` reports a cancel. Returns the
/// wait status and why the command was stopped, if it was.
fn pump(
    shell: Shell,
    deadline: Option<Instant>,
    mut watch: Option<Watch<'_>>,
    mut sink: impl FnMut(Stream, &[u8]) -> bool,
) -> Result<(i32, Option<Stopped>), AgentError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = [true, true];
    let fds = [shell.stdout.as_raw_fd(), shell.stderr.as_raw_fd()];
    let streams = [Stream::Stdout, Stream::Stderr];
    let mut stopped = None;
    let mut exited = false;
    while !exited && stopped.is_none() {
        let mut pfds = [
            libc::pollfd {
                fd: if open[0] { fds[0] } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if open[1] { fds[1] } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shell.exited.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: watch.as_ref().map_or(-1, |w| w.fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let wait_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    stopped = Some(Stopped::Deadline);
                    break;
                }
                i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
            }
        };
        // SAFETY: `pfds` holds the 4 entries poll is told about.
        if unsafe { libc::poll(pfds.as_mut_ptr(), 4, wait_ms) } < 0 {
            if sys::errno() == libc::EINTR {
                continue;
            }
            stopped = Some(Stopped::Sink);
            break;
        }
        for i in 0..2 {
            if open[i] && pfds[i].revents != 0 {
                match sys::read_fd(fds[i], &mut buf) {
                    Ok(0) | Err(_) => open[i] = false,
                    Ok(n) => {
                        if !sink(streams[i], &buf[..n]) {
                            stopped = Some(Stopped::Sink);
                        }
                    }
                }
            }
        }
        if pfds[3].revents != 0 {
            if let Some(w) = watch.as_mut() {
                if (w.readable)() {
                    stopped = Some(Stopped::Cancelled);
                } else if pfds[3].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    // A closed or failing channel: stop watching; the serve loop sees it.
                    watch = None;
                }
            }
        }
        exited = pfds[2].revents != 0;
    }
    if stopped.is_some() {
        kill_group(shell.pid);
    } else {
        // The shell is gone; whatever it wrote is in the pipes. A background
        // grandchild may still hold them open, so read without blocking.
        for i in 0..2 {
            if !open[i] {
                continue;
            }
            // SAFETY: F_SETFL on a descriptor `shell` owns takes no pointers.
            unsafe { libc::fcntl(fds[i], libc::F_SETFL, libc::O_NONBLOCK) };
            while let Ok(n) = sys::read_fd(fds[i], &mut buf) {
                if n == 0 || !sink(streams[i], &buf[..n]) {
                    break;
                }
            }
        }
    }
    let status = sys::wait_pid(shell.pid).map_err(|errno| AgentError::Os {
        op: format!("waitpid {}", shell.pid),
        errno,
    })?;
    Ok((status, stopped))
}

/// A command's output as it arrives: stdout and stderr together never pass
/// [`MAX_DATA`]. The chunk that would pass it is not kept and the capture is marked
/// over the cap; the caller then kills the command and answers `OutputTooLarge`.
#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    over_cap: bool,
}

impl Output {
    /// Keeps `data`; false once the cap is passed (the command must be stopped).
    fn take(&mut self, stream: Stream, data: &[u8]) -> bool {
        if self.over_cap || self.stdout.len() + self.stderr.len() + data.len() > MAX_DATA as usize {
            self.over_cap = true;
            return false;
        }
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(data),
            Stream::Stderr => self.stderr.extend_from_slice(data),
        }
        true
    }
}

fn output_too_large(cmd: &str) -> AgentError {
    AgentError::OutputTooLarge {
        cmd: cmd.to_string(),
        cap: u64::from(MAX_DATA),
    }
}

/// Runs `cmd` to completion, or until `timeout_ms` (0: none) passes or the host
/// cancels it through `watch`; either kills its process group.
pub fn exec(cmd: &str, timeout_ms: u64, watch: Option<Watch<'_>>) -> Result<Response, AgentError> {
    let started = Instant::now();
    let deadline = (timeout_ms > 0).then(|| started + Duration::from_millis(timeout_ms));
    let shell = spawn_shell(cmd, "exec")?;
    let mut output = Output::default();
    let (status, stopped) = pump(shell, deadline, watch, |stream, data| {
        output.take(stream, data)
    })?;
    if output.over_cap {
        return Err(output_too_large(cmd));
    }
    if let Some(Stopped::Deadline | Stopped::Cancelled) = stopped {
        return Err(AgentError::CommandTimedOut {
            cmd: cmd.to_string(),
            after_ms: started.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
        });
    }
    Ok(Response::Exec {
        exit_code: sys::exit_code(status),
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

#[derive(Default)]
struct JobState {
    output: Output,
    /// The exit code once the shell has been reaped.
    exit_code: Option<i32>,
    failure: Option<AgentError>,
}

struct Job {
    cmd: String,
    pid: i32,
    state: Mutex<JobState>,
    done: Condvar,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self, state: &JobState) -> Response {
        if let Some(e) = &state.failure {
            return Response::Error(e.clone());
        }
        if state.output.over_cap {
            return Response::Error(output_too_large(&self.cmd));
        }
        Response::JobStatus {
            running: state.exit_code.is_none(),
            exit_code: state.exit_code.unwrap_or(-1),
            stdout: state.output.stdout.clone(),
            stderr: state.output.stderr.clone(),
        }
    }

    /// Waits until the job ends or `timeout` passes; returns its status either way.
    fn wait(&self, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.exit_code.is_none() && state.failure.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self
                .done
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        self.status(&state)
    }
}

/// A channel's background jobs.
#[derive(Default)]
pub struct Jobs {
    next_id: u64,
    jobs: HashMap<u64, Arc<Job>>,
}

/// How long `job_kill` waits for a SIGKILLed group's shell to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(5);

impl Jobs {
    pub fn start(&mut self, cmd: &str) -> Result<Response, AgentError> {
        let shell = spawn_shell(cmd, "background")?;
        self.next_id += 1;
        let id = self.next_id;
        let job = Arc::new(Job {
            cmd: cmd.to_string(),
            pid: shell.pid,
            state: Mutex::new(JobState::default()),
            done: Condvar::new(),
        });
        let collector = Arc::clone(&job);
        std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || {
                let result = pump(shell, None, None, |stream, data| {
                    collector.lock().output.take(stream, data)
                });
                let mut st = collector.lock();
                match result {
                    Ok((status, _)) => st.exit_code = Some(sys::exit_code(status)),
                    Err(e) => st.failure = Some(e),
                }
                collector.done.notify_all();
            })
            .map_err(|e| AgentError::Os {
                op: "spawn job collector thread".to_string(),
                errno: e.raw_os_error().unwrap_or(0),
            })?;
        let pid = job.pid;
        self.jobs.insert(id, job);
        Ok(Response::Job { id, pid })
    }

    pub fn wait(&self, id: u64, timeout_ms: u64) -> Result<Response, AgentError> {
        let job = self.jobs.get(&id).ok_or(AgentError::UnknownJob { id })?;
        Ok(job.wait(Duration::from_millis(timeout_ms)))
    }

    pub fn kill(&mut self, id: u64) -> Result<Response, AgentError> {
        let job = self.jobs.get(&id).ok_or(AgentError::UnknownJob { id })?;
        if job.lock().exit_code.is_none() {
            kill_group(job.pid);
        }
        let status = job.wait(KILL_GRACE);
        if matches!(status, Response::JobStatus { running: true, .. }) {
            return Err(AgentError::Os {
                op: format!(
                    "job {id} (pid {}) still running {KILL_GRACE:?} after SIGKILL",
                    job.pid
                ),
                errno: libc::ETIMEDOUT,
            });
        }
        self.jobs.remove(&id);
        Ok(status)
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        // A worker that ends takes its jobs with it.
        for job in self.jobs.values() {
            if job.lock().exit_code.is_none() {
                kill_group(job.pid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = MAX_DATA as usize;

    #[test]
    fn output_up_to_the_cap_is_kept_in_its_streams() {
        let mut out = Output::default();
        assert!(out.take(Stream::Stdout, &vec![b'o'; CAP - 1]));
        assert!(out.take(Stream::Stderr, b"e"));
        assert!(!out.over_cap);
        assert_eq!(
            (out.stdout.len(), out.stderr.as_slice()),
            (CAP - 1, &b"e"[..])
        );
    }

    #[test]
    fn the_chunk_passing_the_cap_is_refused_and_flagged() {
        let mut out = Output::default();
        assert!(out.take(Stream::Stderr, &vec![0; CAP - 2]));
        assert!(!out.take(Stream::Stdout, b"abc"));
        assert!(out.over_cap);
        assert_eq!(
            (out.stdout.len(), out.stderr.len()),
            (0, CAP - 2),
            "nothing kept past the cap"
        );
        // Once over, even a chunk that would fit is refused: the command is being killed.
        assert!(!out.take(Stream::Stdout, b"a"));
        assert_eq!(out.stdout.len(), 0);
    }

    #[test]
    fn exec_separates_streams_and_reports_the_exit_code() {
        let resp = exec("printf out; printf err >&2; exit 3", 0, None).unwrap();
        assert_eq!(
            resp,
            Response::Exec {
                exit_code: 3,
                stdout: b"out".to_vec(),
                stderr: b"err".to_vec(),
            }
        );
    }

    #[test]
    fn a_signal_death_is_128_plus_the_signal() {
        let Response::Exec { exit_code, .. } = exec("kill -9 $$", 0, None).unwrap() else {
            panic!("not an exec result")
        };
        assert_eq!(exit_code, 128 + libc::SIGKILL);
    }

    #[test]
    fn stdin_reads_as_end_of_file() {
        let Response::Exec { stdout, .. } = exec("cat; echo done", 0, None).unwrap() else {
            panic!("not an exec result")
        };
        assert_eq!(stdout, b"done\n");
    }

    #[test]
    fn a_background_grandchild_does_not_hold_the_call_open() {
        let start = Instant::now();
        let Response::Exec { stdout, .. } = exec("sleep 3 & echo started", 0, None).unwrap() else {
            panic!("not an exec result")
        };
        assert_eq!(stdout, b"started\n");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn output_past_the_cap_kills_the_command() {
        let cmd = format!("head -c {} /dev/zero; sleep 30", CAP + 1);
        let start = Instant::now();
        assert_eq!(exec(&cmd, 0, None), Err(output_too_large(&cmd)));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the group was killed"
        );
    }

    fn status(resp: Response) -> (bool, i32, Vec<u8>) {
        match resp {
            Response::JobStatus {
                running,
                exit_code,
                stdout,
                ..
            } => (running, exit_code, stdout),
            other => panic!("not a job status: {other:?}"),
        }
    }

    #[test]
    fn jobs_are_numbered_per_channel_and_waited_for() {
        let mut jobs = Jobs::default();
        let Response::Job { id, pid } = jobs.start("echo a; exit 4").unwrap() else {
            panic!("not a job")
        };
        assert_eq!(id, 1);
        assert!(pid > 0);
        assert_eq!(
            status(jobs.wait(1, 10_000).unwrap()),
            (false, 4, b"a\n".to_vec())
        );
        // A finished job is still known until killed.
        assert_eq!(
            status(jobs.wait(1, 0).unwrap()),
            (false, 4, b"a\n".to_vec())
        );
        let Response::Job { id, .. } = jobs.start("true").unwrap() else {
            panic!("not a job")
        };
        assert_eq!(id, 2);
        assert_eq!(jobs.wait(3, 0), Err(AgentError::UnknownJob { id: 3 }));
    }

    #[test]
    fn a_running_job_polls_as_running_then_is_killed_and_forgotten() {
        let mut jobs = Jobs::default();
        jobs.start("echo up; sleep 30").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (running, exit_code, stdout) = status(jobs.wait(1, 0).unwrap());
            assert!(running);
            assert_eq!(exit_code, -1);
            if stdout == b"up\n" {
                break;
            }
            assert!(Instant::now() < deadline, "no output within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            status(jobs.kill(1).unwrap()),
            (false, 128 + libc::SIGKILL, b"up\n".to_vec())
        );
        assert_eq!(jobs.kill(1), Err(AgentError::UnknownJob { id: 1 }));
    }

    #[test]
    fn a_job_passing_the_cap_ends_as_output_too_large() {
        let mut jobs = Jobs::default();
        let cmd = format!("head -c {} /dev/zero; sleep 30", CAP + 1);
        jobs.start(&cmd).unwrap();
        assert_eq!(
            jobs.wait(1, 20_000).unwrap(),
            Response::Error(output_too_large(&cmd))
        );
    }

    #[test]
    fn dropping_the_jobs_kills_the_running_ones() {
        let mut jobs = Jobs::default();
        let Response::Job { pid, .. } = jobs.start("sleep 30").unwrap() else {
            panic!("not a job")
        };
        drop(jobs);
        let deadline = Instant::now() + Duration::from_secs(10);
        // The collector thread reaps the shell once it dies; then the pid is gone.
        // SAFETY: signal 0 only checks for the process; it sends nothing.
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(Instant::now() < deadline, "job {pid} still alive");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_command_past_its_limit_is_killed_with_its_group() {
        let started = Instant::now();
        let err = exec("sleep 30 & sleep 30", 300, None).unwrap_err();
        assert!(
            matches!(&err, AgentError::CommandTimedOut { cmd, after_ms } if cmd == "sleep 30 & sleep 30" && *after_ms >= 300),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_cancel_heard_on_the_watched_descriptor_kills_the_command() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let started = Instant::now();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::io::Write::write_all(&mut &theirs, b"x").unwrap();
            theirs
        });
        let mut heard = || {
            let mut byte = [0u8; 1];
            std::io::Read::read(&mut &ours, &mut byte).is_ok()
        };
        let watch = Watch {
            fd: std::os::fd::AsRawFd::as_raw_fd(&ours),
            readable: &mut heard,
        };
        let err = exec("sleep 30", 0, Some(watch)).unwrap_err();
        assert!(matches!(err, AgentError::CommandTimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(writer.join());
    }
}
