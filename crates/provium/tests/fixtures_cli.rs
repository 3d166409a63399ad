//! Real-VM CLI tests of fixtures: a broken fixture fails each file that uses it with
//! the script's own error while other files pass, fixtures are built once per run,
//! and no snapshot outlives its run, even an interrupted one.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Sandbox;

/// Files under `dir` whose names mark them as snapshot state or a snapshot's initrd.
fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(snapshot_files(&path));
        } else if path
            .extension()
            .is_some_and(|e| e == "snap" || e == "initrd")
        {
            found.push(path);
        }
    }
    found
}

fn lines(path: &Path) -> usize {
    fs::read_to_string(path).unwrap_or_default().lines().count()
}

const GOOD_FIXTURE: &str = r#"
local vm = provium.create()
vm:boot({ memory = "256M" })
vm:write_file("/tmp/good", "prepared")
local count = assert(io.open("good-builds", "a"))
count:write("built\n")
count:close()
"#;

#[test]
fn a_broken_fixture_fails_its_users_only_and_snapshots_are_removed() {
    let sandbox = Sandbox::new();
    let root = sandbox.tree(
        "t",
        &[
            (
                "fixtures/broken.lua",
                "local count = assert(io.open('broken-builds', 'a'))\n\
                 count:write('tried\\n')\n\
                 count:close()\n\
                 error('deliberately broken fixture')\n",
            ),
            ("fixtures/good.lua", GOOD_FIXTURE),
            (
                "a_uses_broken.lua",
                "local vm = provium.fixture('broken')\n",
            ),
            (
                "b_uses_broken.lua",
                "test('needs_broken', function() provium.fixture('broken') end)\n",
            ),
            (
                "c_uses_good.lua",
                "local vm = provium.fixture('good')\n\
                 test('state', function() assert_eq('prepared', vm:read_file('/tmp/good')) end)\n",
            ),
            (
                "d_plain.lua",
                "test('fine', function() assert_eq(2, 1 + 1) end)\n",
            ),
            ("sub/e_missing.lua", "provium.fixture('nope')\n"),
        ],
    );
    let root = fs::canonicalize(root).unwrap();
    let run = sandbox.provium(&["test", "-p", "4", "t"]);
    run.expect_code(1);
    let broken_message = format!(
        "fixture 'broken' failed: {}:4: deliberately broken fixture",
        root.join("fixtures/broken.lua").display()
    );
    let stdout = run.redacted();
    for expected in [
        "  a_uses_broken.lua ... FAIL (T)\n".to_string(),
        format!("    {broken_message}\n"),
        format!("    · needs_broken ... FAIL: {broken_message}\n"),
        "  c_uses_good.lua ... ok (1 test, T)\n".to_string(),
        "  d_plain.lua ... ok (1 test, T)\n".to_string(),
        "  sub/e_missing.lua ... FAIL (T)\n".to_string(),
        format!(
            "    fixture 'nope' not found; looked for {}, {}\n",
            root.join("sub/fixtures/nope.lua").display(),
            root.join("fixtures/nope.lua").display()
        ),
        "FAIL: 2 passed, 3 failed\n".to_string(),
    ] {
        assert!(stdout.contains(&expected), "missing {expected:?}\n{run}");
    }
    assert_eq!(
        lines(&sandbox.root().join("broken-builds")),
        1,
        "built once\n{run}"
    );
    assert_eq!(
        lines(&sandbox.root().join("good-builds")),
        1,
        "built once\n{run}"
    );

    let run_dirs = sandbox.run_dirs();
    assert_eq!(run_dirs.len(), 1, "{run}");
    assert_eq!(snapshot_files(&run_dirs[0]), Vec::<PathBuf>::new());
    let fixture_log = run_dirs[0].join("fixtures/broken.lua.log");
    let log = fs::read_to_string(&fixture_log)
        .unwrap_or_else(|e| panic!("{}: {e}\n{run}", fixture_log.display()));
    assert!(log.contains("deliberately broken fixture"), "{log}");
    assert!(
        !run_dirs[0].join("fixtures/good.lua.log").exists(),
        "a fixture that built keeps no log"
    );
}

/// Kills the provium child if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_interrupted_run_removes_its_snapshots() {
    let sandbox = Sandbox::new();
    sandbox.tree(
        "t",
        &[
            ("fixtures/good.lua", GOOD_FIXTURE),
            (
                "waits.lua",
                "local vm = provium.fixture('good')\n\
                 assert(io.open('ready', 'w')):close()\n\
                 vm:exec('sleep 60')\n",
            ),
        ],
    );
    let child = Command::new(env!("CARGO_BIN_EXE_provium"))
        .args(["test", "t"])
        .current_dir(sandbox.root())
        .env("PROVIUM_RUNS_DIR", &sandbox.runs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let ready = sandbox.root().join("ready");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready.exists() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("provium ended ({status}) before the fixture was resumed");
        }
        assert!(
            Instant::now() < deadline,
            "the fixture was not ready in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let run_dir = sandbox.run_dirs().pop().expect("a run directory");
    assert_eq!(
        snapshot_files(&run_dir).len(),
        2,
        "the snapshot and its initrd exist while the run goes on"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "provium did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(snapshot_files(&run_dir), Vec::<PathBuf>::new());
}
