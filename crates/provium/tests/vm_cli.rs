//! Real-VM CLI tests: the built binary runs small Lua trees that boot the host's
//! kernel under QEMU. They check what users see when VMs fail (missing init, kernel
//! panics, unknown profiles), the logs left behind, and that no QEMU outlives a file
//! or a run, even one interrupted during a boot.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::qemus_under;
use common::{Run, Sandbox};
use provium::vm::default_profile;

/// Each boot is seconds of TCG on a small shared machine: one scenario at a time
/// keeps them inside the boot timeout.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls until no QEMU mentions `dir`; a SIGKILLed process may take a moment to go.
fn assert_no_qemu_under(dir: &Path, context: &dyn std::fmt::Display) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = qemus_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU outlived the run: {left:?}\n{context}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The duration printed on the `NAME ... STATUS (T)` line of `name`.
fn file_seconds(run: &Run, name: &str) -> f64 {
    let prefix = format!("  {name} ... ");
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no result line for {name}\n{run}"));
    let inside = line.rsplit_once('(').expect("a duration").1;
    let seconds = inside.trim_end_matches(')').rsplit(", ").next().unwrap();
    seconds.trim_end_matches('s').parse().expect("seconds")
}

/// The report block of `name`: its result line and the indented lines under it.
fn file_block(run: &Run, name: &str) -> String {
    let prefix = format!("  {name} ... ");
    let mut lines = run.stdout.lines().skip_while(|l| !l.starts_with(&prefix));
    let mut block: Vec<&str> = lines.next().into_iter().collect();
    block.extend(lines.take_while(|l| l.starts_with("    ")));
    block.join("\n")
}

#[test]
fn missing_init_still_serves_and_failing_files_keep_every_console() {
    let _serial = one_at_a_time();
    let resolved = default_profile::resolve(&default_profile::cache_dir())
        .expect("the default profile resolves (linux-image-cloud-amd64, busybox-static)");
    let sandbox = Sandbox::new();
    sandbox.write(
        "provium.toml",
        &format!(
            "[profile.broken-init]\nkernel = {:?}\ninitrd = {:?}\ninit = \"/no/such/init\"\n",
            resolved.kernel.display().to_string(),
            resolved.initrd.display().to_string()
        ),
    );
    sandbox.tree(
        "tests",
        &[
            (
                "a_missing_init.lua",
                "local vm = provium.create('broken-init')\n\
                 vm:boot({ memory = '256M' })\n\
                 assert_eq('served', vm:exec('echo served').stdout.trim())\n\
                 error('deliberate failure after exec worked')\n",
            ),
            ("b_unknown.lua", "provium.create('nosuch')\n"),
        ],
    );
    let run = sandbox.provium(&["test", "-p", "1", "tests"]);
    run.expect_code(1);

    let missing_init = file_block(&run, "a_missing_init.lua");
    assert!(
        missing_init.contains("deliberate failure after exec worked"),
        "the guest did not serve without its init\n{run}"
    );
    assert!(
        missing_init.contains("--- console (last 20 lines) ---"),
        "{run}"
    );
    let unknown = file_block(&run, "b_unknown.lua");
    assert!(
        unknown.contains("unknown profile 'nosuch'; known profiles: broken-init, default"),
        "{run}"
    );

    let log = run
        .listed_logs()
        .into_iter()
        .find(|p| p.ends_with("a_missing_init.lua.log"))
        .unwrap_or_else(|| panic!("no log listed for a_missing_init.lua\n{run}"));
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("--- console 1 ---"), "{log}");
    assert!(
        log.contains("warning: init /no/such/init does not exist"),
        "the console does not warn about the missing init:\n{log}"
    );
    assert_no_qemu_under(&sandbox.runs, &run);
}

#[test]
fn a_kernel_panic_fails_its_file_at_once_and_spares_the_other() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new();
    sandbox.tree(
        "tests",
        &[
            (
                "panic.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '256M' })\n\
                 test('sysrq_crash', function()\n\
                   vm:exec('echo c > /proc/sysrq-trigger')\n\
                 end)\n",
            ),
            (
                "calm.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '256M' })\n\
                 assert(vm:exec('true').ok)\n\
                 vm:shutdown()\n",
            ),
        ],
    );
    let run = sandbox.provium(&["test", "-p", "2", "tests"]);
    run.expect_code(1);
    run.assert_stdout_contains("FAIL: 1 passed, 1 failed");
    assert!(
        file_block(&run, "calm.lua").contains("calm.lua ... ok"),
        "{run}"
    );

    let panic = file_block(&run, "panic.lua");
    assert!(panic.contains("· sysrq_crash ... FAIL: "), "{run}");
    assert!(panic.contains("the kernel panicked"), "{run}");
    let console = panic
        .split_once("--- console (last 20 lines) ---")
        .unwrap_or_else(|| panic!("no console block under panic.lua\n{run}"))
        .1;
    assert!(
        console.contains("Kernel panic - not syncing"),
        "the console tail lacks the panic\n{run}"
    );
    // An exec waits up to 10 minutes; the panic must end it in seconds.
    let seconds = file_seconds(&run, "panic.lua");
    assert!(seconds < 30.0, "panic.lua took {seconds}s\n{run}");
    assert_no_qemu_under(&sandbox.runs, &run);
}

#[test]
fn vms_left_running_are_killed_when_their_file_ends() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new();
    sandbox.tree(
        "tests",
        &[
            (
                "a_leaves_a_vm.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '256M' })\n\
                 assert(vm:exec('true').ok)\n",
            ),
            (
                "b_checks.lua",
                "local runs = assert(os.getenv('PROVIUM_RUNS_DIR'))\n\
                 -- [q]: the pattern must not match the shell running pgrep.\n\
                 local pgrep = io.popen(\"pgrep -af '[q]emu-system.*\" .. runs .. \"'\")\n\
                 local found = pgrep:read('a')\n\
                 pgrep:close()\n\
                 assert_eq('', found, 'QEMU outlived a_leaves_a_vm.lua')\n",
            ),
        ],
    );
    let run = sandbox.provium(&["test", "-p", "1", "tests"]);
    run.expect_code(0);
    run.assert_stdout_contains("ok: 2 passed");
    assert_no_qemu_under(&sandbox.runs, &run);
}

/// Kills the child on every path out of the test.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigint_during_a_boot_leaves_no_qemu() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new();
    let tests = sandbox.tree(
        "tests",
        &[(
            "slow.lua",
            "local vm = provium.create()\nvm:boot()\nvm:exec('sleep 60')\n",
        )],
    );
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_provium"))
            .args(["test", "-p", "1"])
            .arg(&tests)
            .current_dir(sandbox.root())
            .env("PROVIUM_RUNS_DIR", &sandbox.runs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start provium"),
    );
    let runs: PathBuf = sandbox.runs.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while qemus_under(&runs).is_empty() {
        assert!(Instant::now() < deadline, "QEMU never started");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "provium ended before booting"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "provium did not stop within 30s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    }
    assert!(!status.success(), "an interrupted run exited 0");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert_no_qemu_under(&runs, &stderr);
}

#[test]
fn fixed_pool_refuses_oversize_boots_detects_self_waits_and_serialises_the_rest() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new();
    sandbox.tree(
        "tests",
        &[
            (
                "a_oversize.lua",
                "local ok, err = pcall(function() provium.create():boot({ memory = '1G' }) end)\n\
                 assert(not ok, 'a 1G VM booted in a 768M budget')\n\
                 assert_contains(tostring(err), 'more than the whole pool (768M memory, 2 CPUs)')\n",
            ),
            (
                "b_self_wait.lua",
                "local a = provium.create()\n\
                 a:boot({ memory = '512M' })\n\
                 local ok, err = pcall(function() provium.create():boot({ memory = '512M' }) end)\n\
                 assert(not ok, 'a second 512M VM booted in a 768M budget')\n\
                 a:shutdown()\n\
                 error(err)\n",
            ),
            (
                "c_fits.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '512M' })\n\
                 assert(vm:exec('true').ok)\n\
                 vm:shutdown()\n",
            ),
            (
                "d_fits.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '512M' })\n\
                 assert(vm:exec('true').ok)\n\
                 vm:shutdown()\n",
            ),
        ],
    );
    let started = Instant::now();
    let run = sandbox.provium(&["test", "--mem", "768M", "--cpus", "2", "tests"]);
    run.expect_code(1);
    assert!(
        run.stdout
            .starts_with("provium test\n\nresource pool: 768M memory, 2 CPUs\n\n"),
        "{run}"
    );
    assert!(
        run.stdout.contains("  a_oversize.lua ... ok"),
        "an oversize boot was not refused with the budget named\n{run}"
    );
    let self_wait = file_block(&run, "b_self_wait.lua");
    assert!(
        self_wait.contains("b_self_wait.lua ... FAIL"),
        "the file waiting on its own lease did not fail\n{run}"
    );
    assert!(
        self_wait.contains("circular wait")
            && self_wait.contains("b_self_wait.lua holds VM b_self_wait.lua#1"),
        "the circular-wait error does not explain the wait\n{run}"
    );
    assert!(run.stdout.contains("  c_fits.lua ... ok"), "{run}");
    assert!(run.stdout.contains("  d_fits.lua ... ok"), "{run}");
    assert!(run.stdout.ends_with("FAIL: 3 passed, 1 failed\n"), "{run}");
    // Nothing waited for a deadline: the self-wait failed at once.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the pool run took {:?}\n{run}",
        started.elapsed()
    );
}
