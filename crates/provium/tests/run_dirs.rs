//! What runs leave on disk: a passing run nothing but its record, a failing run its
//! logs alone (consoles inside them), a run killed with SIGKILL nothing once the next
//! run has started, and never more than `PROVIUM_KEEP_RUNS` finished runs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Sandbox;

const ONE_VM: &str = "local vm = provium.create()\n\
                      vm:boot({ memory = '256M' })\n\
                      assert(vm:exec('echo booted').ok)\n";

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn passing_and_failing_runs_leave_only_their_record_and_logs() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            ("pass.lua", &format!("{ONE_VM}vm:shutdown()\n")),
            ("fail.lua", &format!("{ONE_VM}error('deliberate')\n")),
        ],
    );
    let passing = sb.provium(&["test", "-f", "pass", "t"]);
    passing.expect_code(0);
    assert!(sb.run_dirs().is_empty(), "{passing}");
    let failing = sb.provium(&["test", "-f", "fail", "t"]);
    failing.expect_code(1);
    let dirs = sb.run_dirs();
    assert_eq!(dirs.len(), 1, "{failing}");
    assert_eq!(files_under(&dirs[0]), ["fail.lua.log"], "{failing}");
    let log = fs::read_to_string(dirs[0].join("fail.lua.log")).unwrap();
    assert!(log.contains("--- console 1 ---"), "{log}");
    assert!(log.contains("Linux version"), "the console is in the log");
    // The records sit beside the run directories, and nothing else does.
    for entry in fs::read_dir(&sb.runs).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with("run-") || name.starts_with("last-"),
            "{name} left in the runs directory"
        );
    }
}

#[test]
fn a_run_killed_with_sigkill_is_cleaned_up_by_the_next() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[("slow.lua", &format!("{ONE_VM}os.execute('sleep 60')\n"))],
    );
    sb.tree("u", &[("quick.lua", "")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_provium"))
        .args(["test", "t"])
        .current_dir(sb.root())
        .env("PROVIUM_RUNS_DIR", &sb.runs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until its VM is up (its console shows the agent), then kill it outright.
    let deadline = Instant::now() + Duration::from_secs(120);
    let booted = |dirs: &[PathBuf]| {
        dirs.iter().any(|d| {
            fs::read_dir(d).into_iter().flatten().any(|e| {
                let console = e.unwrap().path().join("console.log");
                fs::read_to_string(console).is_ok_and(|c| c.contains("provium-agent: serving"))
            })
        })
    };
    while !booted(&sb.run_dirs()) {
        assert!(Instant::now() < deadline, "the VM never booted");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = sb.run_dirs();
    assert_eq!(killed.len(), 1);
    sb.provium(&["test", "u"]).expect_code(0);
    assert!(
        !killed[0].exists(),
        "the killed run's directory survived the next run: {:?}",
        files_under(&killed[0])
    );
}

#[test]
fn only_the_newest_finished_runs_are_kept() {
    let sb = Sandbox::new();
    sb.tree("t", &[("a.lua", "error('keep my log')\n")]);
    sb.tree("other", &[("b.lua", "error('recorded')\n")]);
    // The run --rerun-failed of `other` points at: kept whatever its age.
    sb.provium(&["test", "other"]).expect_code(1);
    let recorded = sb.run_dirs();
    for _ in 0..4 {
        sb.provium_with_env(&["test", "t"], &[("PROVIUM_KEEP_RUNS", "2")])
            .expect_code(1);
        std::thread::sleep(Duration::from_millis(20));
    }
    let dirs = sb.run_dirs();
    // Each run swept before making its own: the last kept the 2 newest finished runs
    // and the one `other`'s record points at, then added its own.
    assert!(dirs.contains(&recorded[0]), "{dirs:?}");
    assert_eq!(dirs.len(), 4, "{dirs:?}");
}
