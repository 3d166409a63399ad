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
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys::os_error("fork"));
    }
    if pid == 0 {
        // Only async-signal-safe calls between fork and exec.
        unsafe {
            libc::setsid();
            libc::dup2(in_r.as_raw_fd(), 0);
            libc::dup2(out_w.as_raw_fd(), 1);
            libc::dup2(err_w.as_raw_fd(), 2);
            // Rust ignores SIGPIPE; commands expect the default (`yes | head`).
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execv(sh.as_ptr(), argv.as_ptr());
            libc::write(2, failure.as_ptr().cast(), failure.len());
            libc::_exit(127);
        }
    }
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
        exited: unsafe { OwnedFd::from_raw_fd(pidfd) },
    })
}

/// SIGKILLs a command's process group, and the shell itself in case it has not yet
/// called `setsid` (then the group does not exist yet).
fn kill_group(pid: i32) {
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
        // SAFETY: `pfds` is a live array of 4 pollfd structs for the whole call.
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

/// Runs `cmd` to completion, or until `timeout_ms` (0: none) passes or the host
/// cancels it through `watch`; either kills its process group.
pub fn exec(cmd: &str, timeout_ms: u64, watch: Option<Watch<'_>>) -> Result<Response, AgentError> {
    let started = Instant::now();
    let deadline = (timeout_ms > 0).then(|| started + Duration::from_millis(timeout_ms));
    let shell = spawn_shell(cmd, "exec")?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut over = false;
    let (status, stopped) = pump(shell, deadline, watch, |stream, data| {
        if stdout.len() + stderr.len() + data.len() > MAX_DATA as usize {
            over = true;
            return false;
        }
        match stream {
            Stream::Stdout => stdout.extend_from_slice(data),
            Stream::Stderr => stderr.extend_from_slice(data),
        }
        true
    })?;
    if over {
        return Err(AgentError::OutputTooLarge {
            cmd: cmd.to_string(),
            cap: u64::from(MAX_DATA),
        });
    }
    if let Some(Stopped::Deadline | Stopped::Cancelled) = stopped {
        return Err(AgentError::CommandTimedOut {
            cmd: cmd.to_string(),
            after_ms: started.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
        });
    }
    Ok(Response::Exec {
        exit_code: sys::exit_code(status),
        stdout,
        stderr,
    })
}

#[derive(Default)]
struct JobState {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The exit code once the shell has been reaped.
    exit_code: Option<i32>,
    over_cap: bool,
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
        if state.over_cap {
            return Response::Error(AgentError::OutputTooLarge {
                cmd: self.cmd.clone(),
                cap: u64::from(MAX_DATA),
            });
        }
        Response::JobStatus {
            running: state.exit_code.is_none(),
            exit_code: state.exit_code.unwrap_or(-1),
            stdout: state.stdout.clone(),
            stderr: state.stderr.clone(),
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
                    let mut st = collector.lock();
                    if st.stdout.len() + st.stderr.len() + data.len() > MAX_DATA as usize {
                        st.over_cap = true;
                        return false;
                    }
                    match stream {
                        Stream::Stdout => st.stdout.extend_from_slice(data),
                        Stream::Stderr => st.stderr.extend_from_slice(data),
                    }
                    true
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
