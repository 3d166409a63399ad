//! `provium shell`, `vm:shell()` and `--shell-on-failure` as a person meets them: the
//! built binary on a real pseudo-terminal (openpty; provium is the session leader with
//! the pty as its controlling terminal), typing into a real guest shell under QEMU. And
//! the refusals that keep a shell left in a file from ever hanging a run.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::qemus_under;
use common::Sandbox;

/// Each boot is seconds of TCG on a small shared machine: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a boot plus a prompt may take under TCG on a busy machine.
const BOOT: Duration = Duration::from_secs(90);

/// `provium ARGS` on a new pseudo-terminal of `rows`×`cols`.
struct OnPty {
    master: Option<File>,
    child: Child,
    /// Everything the terminal showed so far, filled by a reader thread.
    screen: Arc<Mutex<Vec<u8>>>,
    /// How much of `screen` earlier expectations consumed.
    cursor: usize,
    /// Tells the reader thread to drop its end of the terminal.
    closing: Arc<AtomicBool>,
}

impl OnPty {
    fn spawn(sb: &Sandbox, dir: &Path, args: &[&str], rows: u16, cols: u16) -> OnPty {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes the two descriptors; the name buffer and termios are
        // null (not wanted); `size` is read.
        let ret = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
        // openpty's descriptors are inherited across exec: provium holding the master
        // would keep the terminal from ever hanging up.
        for fd in [master, slave] {
            // SAFETY: F_SETFD on descriptors we own takes no pointers.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        // SAFETY: openpty succeeded; both descriptors are new and ours alone.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut command = Command::new(env!("CARGO_BIN_EXE_provium"));
        command
            .args(args)
            .current_dir(dir)
            .env("PROVIUM_RUNS_DIR", &sb.runs)
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and the TIOCSCTTY ioctl are async-signal-safe and touch no
        // memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn provium");
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let filled = Arc::clone(&screen);
        let closing = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&closing);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Acquire) {
                let mut pfd = libc::pollfd {
                    fd: reader.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd we own.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                // EIO once provium and everything it started closed the terminal.
                match reader.read(&mut buf) {
                    Ok(n) if n > 0 => filled.lock().unwrap().extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
        });
        OnPty {
            master: Some(master),
            child,
            screen,
            cursor: 0,
            closing,
        }
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// The screen without colours and cursor movements.
    fn plain(&self) -> String {
        let escapes = regex::Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]").unwrap();
        escapes.replace_all(&self.screen(), "").into_owned()
    }

    /// Waits until the terminal shows `needle` after what earlier calls consumed.
    fn expect(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen.lock().unwrap().clone();
            let text = String::from_utf8_lossy(&screen[self.cursor.min(screen.len())..]);
            if let Some(at) = text.find(needle) {
                let seen = text[..at + needle.len()].to_string();
                self.cursor += seen.len();
                return seen;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "the terminal never showed {needle:?} within {within:?}; it shows:\n{}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_(&mut self, keys: &str) {
        let master = self.master.as_mut().expect("terminal open");
        master.write_all(keys.as_bytes()).unwrap();
    }

    fn resize(&self, rows: u16, cols: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let master = self.master.as_ref().expect("terminal open");
        // SAFETY: TIOCSWINSZ reads `size`; the kernel signals SIGWINCH to the
        // terminal's foreground process group (provium).
        let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(ret, 0);
    }

    /// Closes this end: the terminal hangs up, and its session leader (provium) gets
    /// SIGHUP.
    fn hang_up(&mut self) {
        self.closing.store(true, Ordering::Release);
        self.master = None;
    }

    fn wait(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status
                    .code()
                    .unwrap_or_else(|| panic!("provium died of a signal: {status:?}"));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "provium did not exit within {within:?}; the terminal shows:\n{}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_no_qemu(sb: &Sandbox) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !qemus_under(&sb.runs).is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU outlived provium:\n{}",
            qemus_under(&sb.runs).join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest's prompt (busybox `sh -l` as root).
const PROMPT: &str = "# ";

#[test]
fn provium_shell_on_a_terminal_is_a_real_terminal() {
    let _one = one_at_a_time();
    let sb = Sandbox::new();
    let mut term = OnPty::spawn(&sb, sb.root(), &["shell"], 30, 100);
    term.expect(PROMPT, BOOT);
    // Markers the guest computes, since the terminal also echoes what is typed.
    term.type_("stty size; echo tty=$((6*7)) TERM=$TERM\r");
    let seen = term.expect("tty=42", Duration::from_secs(20));
    assert!(seen.contains("30 100"), "{seen:?}");
    term.expect("TERM=xterm", Duration::from_secs(5));
    term.resize(40, 120);
    std::thread::sleep(Duration::from_millis(300));
    term.type_("stty size\r");
    term.expect("40 120", Duration::from_secs(20));
    // Ctrl-C reaches the guest's foreground job, not provium.
    term.type_("sleep 60\r");
    std::thread::sleep(Duration::from_secs(1));
    term.type_("\x03");
    term.type_("echo sigint=$((0+$?))\r");
    term.expect("sigint=130", Duration::from_secs(20));
    // Job control: a background job brought back to the foreground.
    term.type_("sleep 2 &\r");
    term.type_("fg; echo fg=$((40+$?))\r");
    term.expect("fg=40", Duration::from_secs(30));
    term.type_("exit 5\r");
    assert_eq!(term.wait(Duration::from_secs(30)), 5, "{}", term.screen());
    assert_no_qemu(&sb);
}

#[test]
fn provium_shell_runs_a_script_from_stdin_or_a_command_and_exits_with_its_status() {
    let _one = one_at_a_time();
    let sb = Sandbox::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_provium"))
        .arg("shell")
        .current_dir(sb.root())
        .env("PROVIUM_RUNS_DIR", &sb.runs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"uname -r\necho to-stderr >&2\nexit 3\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let release = regex::Regex::new(r"(?m)^\d+\.\d+\.\d+\S*$").unwrap();
    assert!(release.is_match(&stdout), "no kernel release in:\n{stdout}");
    assert!(stderr.contains("to-stderr"), "{stderr}");
    assert!(!stdout.contains("to-stderr"), "{stdout}");

    let run = sb.provium(&["shell", "-c", "echo one; exit 4"]);
    run.expect_code(4);
    assert_eq!(run.stdout, "one\n", "{run}");
    assert_no_qemu(&sb);
}

#[test]
fn a_hung_up_terminal_or_sigterm_ends_provium_shell_without_a_qemu_left() {
    let _one = one_at_a_time();
    let sb = Sandbox::new();
    let mut term = OnPty::spawn(&sb, sb.root(), &["shell"], 24, 80);
    term.expect(PROMPT, BOOT);
    term.hang_up();
    let code = term.wait(Duration::from_secs(20));
    assert_eq!(code, 128 + libc::SIGHUP, "{}", term.screen());
    assert_no_qemu(&sb);

    let mut child = Command::new(env!("CARGO_BIN_EXE_provium"))
        .args(["shell", "-c", "echo started; sleep 300"])
        .current_dir(sb.root())
        .env("PROVIUM_RUNS_DIR", &sb.runs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut started = [0u8; 8];
    stdout.read_exact(&mut started).unwrap();
    assert_eq!(&started, b"started\n");
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "provium shell ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert_no_qemu(&sb);
}

#[test]
fn vm_shell_pauses_the_test_and_its_timeout() {
    let _one = one_at_a_time();
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "paused.lua",
            "provium.timeout('15s')\n\
             local vm = provium.create()\n\
             vm:boot()\n\
             vm:write_file('/tmp/before', 'from the test\\n')\n\
             assert_eq(0, vm:shell())\n\
             assert_eq('typed\\n', vm:read_file('/tmp/after'))\n",
        )],
    );
    let mut term = OnPty::spawn(&sb, &sb.root().join("t"), &["test", "paused.lua"], 24, 80);
    term.expect("the test is paused", BOOT);
    term.expect(PROMPT, Duration::from_secs(30));
    // Longer than the file's 15 s: the person's time is not the test's.
    term.type_("cat /tmp/before; echo typed > /tmp/after; sleep 17; exit\r");
    term.expect("from the test", Duration::from_secs(20));
    let code = term.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", term.screen());
    assert!(
        term.plain().contains("paused.lua ... ok"),
        "{}",
        term.plain()
    );
    assert_no_qemu(&sb);
}

#[test]
fn shell_on_failure_opens_in_the_failed_files_vm_before_teardown() {
    let _one = one_at_a_time();
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "fails.lua",
            "local vm = provium.create()\n\
             vm:boot()\n\
             test('fails', function()\n\
               vm:exec('echo left-$((6*7)) > /tmp/state')\n\
               assert_eq(1, 2)\n\
             end)\n",
        )],
    );
    let mut term = OnPty::spawn(
        &sb,
        &sb.root().join("t"),
        &["test", "--shell-on-failure", "fails.lua"],
        24,
        80,
    );
    term.expect("--shell-on-failure", BOOT);
    term.expect(PROMPT, Duration::from_secs(30));
    term.type_("cat /tmp/state; exit\r");
    term.expect("left-42", Duration::from_secs(20));
    assert_eq!(term.wait(Duration::from_secs(60)), 1, "{}", term.screen());
    assert!(term.screen().contains("FAIL"), "{}", term.screen());
    assert_no_qemu(&sb);
}

/// Without a terminal, or with files running at once, a shell could only wait for
/// no one: refused at once, before any boot.
#[test]
fn a_shell_without_a_terminal_or_in_a_parallel_run_is_refused_at_once() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            (
                "a.lua",
                "local vm = provium.create()\nlocal ok, err = pcall(vm.shell, vm)\n\
                 assert(not ok)\nprint(err)\nerror(err)\n",
            ),
            ("b.lua", "-- nothing\n"),
        ],
    );
    let start = Instant::now();
    let run = sb.provium(&["test", "-p", "2", "t"]);
    run.expect_code(1);
    let log = std::fs::read_to_string(&run.listed_logs()[0]).unwrap();
    assert!(
        log.contains("vm:shell() needs a terminal and -p 1"),
        "{log}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(qemus_under(&sb.runs), Vec::<String>::new());

    let run = sb.provium(&["test", "--shell-on-failure", "t/b.lua"]);
    run.expect_code(1);
    run.assert_stderr_contains("--shell-on-failure needs a terminal and -p 1");
}
