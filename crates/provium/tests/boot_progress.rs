//! Boot deadlines measure progress, not wall time: a guest whose console prints slowly
//! but steadily boots however long it takes, and one whose console goes silent fails
//! once it has been silent for the boot timeout, with the silence named.
//!
//! The guest is `tests/support/fake-qemu`, a stand-in for QEMU (PROVIUM_QEMU) that
//! prints console lines at a chosen pace and then serves the agent channel through a
//! real provium-agent running on the host: the pace of a real kernel cannot be set
//! reliably under TCG, and the deadline logic is Provium's, not the guest's.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Run, Sandbox};
use provium::vm::agent_bin::AGENT;

fn fake_qemu() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fake-qemu")
}

fn agent(dir: &Path) -> PathBuf {
    let exe = dir.join("provium-agent");
    std::fs::write(&exe, AGENT).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

fn run_with_console(sb: &Sandbox, console: &str) -> (Run, Duration) {
    let started = Instant::now();
    let run = sb.provium_with_env(
        &["test", "t"],
        &[
            ("PROVIUM_QEMU", fake_qemu().to_str().unwrap()),
            ("PROVIUM_ACCEL", "tcg"),
            ("FAKE_QEMU_CONSOLE", console),
            ("FAKE_QEMU_AGENT", agent(sb.root()).to_str().unwrap()),
        ],
    );
    (run, started.elapsed())
}

#[test]
fn a_slow_but_steady_boot_passes_past_its_boot_timeout() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "slow.lua",
            "local vm = provium.create()\n\
             vm:boot({ boot_timeout = 1.5 })\n\
             assert_eq('up\\n', vm:exec('echo up').stdout.value)\n\
             vm:kill()\n",
        )],
    );
    // 5 s of boot, a line every 0.4 s: more than three times the boot timeout.
    let (run, took) = run_with_console(&sb, "steady:5:0.4");
    run.expect_code(0);
    assert!(took >= Duration::from_secs(5), "{took:?}\n{run}");
}

#[test]
fn a_silent_boot_fails_at_its_boot_timeout_naming_the_silence() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "silent.lua",
            "local vm = provium.create()\nvm:boot({ boot_timeout = 2 })\n",
        )],
    );
    let (run, took) = run_with_console(&sb, "silent");
    run.expect_code(1);
    run.assert_stdout_contains(
        "the console was silent for 2s and the agent had not answered (boot timeout)",
    );
    run.assert_stdout_contains("fake-qemu: booting");
    assert!(took < Duration::from_secs(10), "{took:?}\n{run}");
}
