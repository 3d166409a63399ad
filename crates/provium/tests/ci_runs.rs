//! CLI integration tests of runs made safe for CI, on pure-Lua files: timeouts at
//! every layer end a file however it spins, retries mark flaky files, partitions
//! shard a suite, `provium list` shows the selection, and the failure record keeps
//! what a filtered run did not run.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use common::{Run, Sandbox};

/// The JSON events of a run made with `--json FILE`.
fn events(sb: &Sandbox, name: &str) -> Vec<serde_json::Value> {
    fs::read_to_string(sb.root().join(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn finished<'a>(events: &'a [serde_json::Value], file: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["type"] == "file_finished" && e["file"] == file)
        .collect()
}

fn timed(sb: &Sandbox, args: &[&str]) -> (Run, Duration) {
    let started = Instant::now();
    let run = sb.provium(args);
    (run, started.elapsed())
}

#[test]
fn a_spinning_file_ends_at_its_timeout_and_the_others_pass() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            ("a_ok.lua", "test('fine', function() end)\n"),
            ("b_spin.lua", "while true do end\n"),
            (
                "c_in_test.lua",
                "test('spins', function() local x = 0 while true do x = x + 1 end end)\n",
            ),
            ("d_host_sleep.lua", "os.execute('sleep 30')\n"),
        ],
    );
    let (run, took) = timed(
        &sb,
        &["test", "-p", "4", "--timeout", "1", "--json", "e.json", "t"],
    );
    run.expect_code(1);
    assert!(took < Duration::from_secs(6), "took {took:?}\n{run}");
    run.assert_stdout_contains("  a_ok.lua ... ok (1 test, ");
    run.assert_stdout_contains("  b_spin.lua ... FAIL (");
    run.assert_stdout_contains("    timed out after 1s\n");
    run.assert_stdout_contains("    · spins ... FAIL: timed out after 1s (the file's limit)\n");
    run.assert_stdout_contains("    timed out after 1s (in sub-test 'spins')\n");
    run.assert_stdout_contains("FAIL: 1 passed, 3 failed");
    let events = events(&sb, "e.json");
    for file in ["b_spin.lua", "c_in_test.lua", "d_host_sleep.lua"] {
        assert_eq!(
            finished(&events, file)[0]["outcome"],
            "timed-out",
            "{file}\n{run}"
        );
    }
    // The log is complete: the result line names the outcome.
    let log = run
        .listed_logs()
        .into_iter()
        .find(|p| p.ends_with("b_spin.lua.log"))
        .unwrap();
    let text = fs::read_to_string(log).unwrap();
    assert!(text.contains("result: FAIL (timed-out)"), "{text}");
}

#[test]
fn a_sub_test_timeout_fails_that_sub_test_and_the_file_goes_on() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "subs.lua",
            "test('slow', { timeout = 0.3 }, function() while true do end end)\n\
             test('slow_string', { timeout = '200ms' }, function() os.execute('sleep 5') end)\n\
             test('after', function() end)\n\
             local ok, err = pcall(test, 'bad', { timout = 1 }, function() end)\n\
             assert_contains(err, \"unknown option 'timout' (known options: timeout)\")\n",
        )],
    );
    let (run, took) = timed(&sb, &["test", "--json", "e.json", "t"]);
    run.expect_code(1);
    assert!(took < Duration::from_secs(4), "took {took:?}\n{run}");
    run.assert_stdout_contains("    · slow ... FAIL: timed out after 300ms\n");
    run.assert_stdout_contains("    · slow_string ... FAIL: timed out after 200ms\n");
    run.assert_stdout_contains("    · after ... ok\n");
    let events = events(&sb, "e.json");
    let outcomes: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["type"] == "test_finished")
        .map(|e| (e["name"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("slow", "timed-out"),
            ("slow_string", "timed-out"),
            ("after", "passed")
        ]
    );
    assert_eq!(finished(&events, "subs.lua")[0]["outcome"], "timed-out");
}

#[test]
fn timeouts_come_from_the_flag_the_config_and_the_file_itself() {
    let sb = Sandbox::new();
    sb.write("provium.toml", "[run]\ntimeout = \"500ms\"\n");
    sb.tree(
        "t",
        &[
            ("sleeps.lua", "os.execute('sleep 1.5')\n"),
            ("own.lua", "provium.timeout(0.3)\nos.execute('sleep 5')\n"),
        ],
    );
    let from_config = sb.provium(&["test", "-f", "sleeps", "t"]);
    from_config.expect_code(1);
    from_config.assert_stdout_contains("    timed out after 500ms\n");
    // --timeout 0 lifts every run-wide limit.
    let unlimited = sb.provium(&["test", "--timeout", "0", "-f", "sleeps", "t"]);
    unlimited.expect_code(0);
    // A file's own limit wins over the run's.
    let (own, took) = timed(&sb, &["test", "--timeout", "0", "-f", "own", "t"]);
    own.expect_code(1);
    own.assert_stdout_contains("    timed out after 300ms\n");
    assert!(took < Duration::from_secs(4), "{took:?}\n{own}");
    let bad = sb.provium(&["test", "--timeout", "soon", "t"]);
    bad.expect_code(1);
    bad.assert_stderr_contains("invalid duration 'soon'");
}

#[test]
fn retries_mark_a_late_pass_flaky_and_a_steady_failure_failed() {
    let sb = Sandbox::new();
    let marker = sb.root().join("failed-once");
    sb.tree(
        "t",
        &[
            ("always.lua", "error('broken for good')\n"),
            (
                "flaky.lua",
                &format!(
                    "local seen = io.open({m:?})\n\
                     if seen then seen:close() else io.open({m:?}, 'w'):close() error('first run fails') end\n",
                    m = marker.display().to_string()
                ),
            ),
        ],
    );
    let run = sb.provium(&["test", "-p", "1", "--retries", "2", "--json", "e.json", "t"]);
    run.expect_code(1);
    run.assert_stdout_contains("  flaky.lua ... ok (");
    run.assert_stdout_contains(", flaky: passed on attempt 2)\n");
    run.assert_stdout_contains("FAIL: 1 passed, 1 failed, 1 flaky\n");
    assert_eq!(
        run.stdout.matches("always.lua ... FAIL").count(),
        1,
        "{run}"
    );
    let events = events(&sb, "e.json");
    let attempts: Vec<(u64, bool)> = finished(&events, "always.lua")
        .iter()
        .map(|e| {
            (
                e["attempt"].as_u64().unwrap(),
                e["final"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, false), (2, false), (3, true)]);
    // Every attempt keeps its own log.
    let logs: Vec<String> = fs::read_dir(&sb.run_dirs()[0])
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("always.lua"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        logs,
        [
            "always.lua.attempt2.log",
            "always.lua.attempt3.log",
            "always.lua.log"
        ]
    );
    // Without --retries nothing is retried.
    fs::remove_file(&marker).unwrap();
    let once = sb.provium(&["test", "-f", "flaky", "t"]);
    once.expect_code(1);
}

#[test]
fn shards_are_disjoint_cover_the_suite_and_may_be_empty() {
    let sb = Sandbox::new();
    let names: Vec<String> = (0..13).map(|i| format!("d{}/t{i:02}.lua", i % 3)).collect();
    let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
    sb.tree("t", &files);
    let all: BTreeSet<String> = names.iter().cloned().collect();
    for mode in ["count", "hash"] {
        for shards in 1..=5 {
            let mut seen = BTreeSet::new();
            for shard in 1..=shards {
                let spec = format!("{mode}:{shard}/{shards}");
                let run = sb.provium(&["list", "--partition", &spec, "t"]);
                run.expect_code(0);
                for line in run.stdout.lines() {
                    assert!(seen.insert(line.to_string()), "{spec}: {line} twice\n{run}");
                }
            }
            assert_eq!(seen, all, "{mode} with {shards} shards");
        }
    }
    let sb = Sandbox::new();
    sb.tree("t", &[("only.lua", "")]);
    let empty = sb.provium(&["test", "--partition", "count:2/2", "t"]);
    empty.expect_code(0);
    empty.assert_stdout("provium test\n\npartition count:2/2: 0 of 1 files\n\n\nok: 0 passed\n");
    let full = sb.provium(&["test", "--partition", "count:1/2", "t"]);
    full.expect_code(0);
    full.assert_stdout_contains("partition count:1/2: 1 of 1 files\n\n  only.lua ... ok");
}

#[test]
fn list_prints_the_selection_and_boots_nothing() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            ("a.lua", "error('would fail')"),
            ("b/c.lua", ""),
            ("fixtures/f.lua", ""),
        ],
    );
    let run = sb.provium(&["list", "t"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "a.lua\nb/c.lua\n", "{run}");
    let json = sb.provium(&["list", "--json", "-f", "c", "t"]);
    json.expect_code(0);
    let lines: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["file"], "b/c.lua");
    assert!(lines[0]["path"].as_str().unwrap().ends_with("t/b/c.lua"));
    assert!(sb.run_dirs().is_empty(), "list made a run directory");
    let rerun = sb.provium(&["list", "--rerun-failed", "t"]);
    rerun.expect_code(0);
    rerun.assert_stdout_contains("nothing to rerun");
}

#[test]
fn a_filtered_run_keeps_the_other_files_failures_in_the_record() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[("a.lua", "error('a fails')"), ("b.lua", "error('b fails')")],
    );
    sb.provium(&["test", "t"]).expect_code(1);
    sb.write("t/b.lua", "-- fixed\n");
    sb.provium(&["test", "-f", "b", "t"]).expect_code(0);
    let rerun = sb.provium(&["list", "--rerun-failed", "t"]);
    rerun.expect_code(0);
    assert_eq!(rerun.stdout, "a.lua\n", "{rerun}");
    let run = sb.provium(&["test", "--rerun-failed", "t"]);
    run.expect_code(1);
    run.assert_stdout_contains("  a.lua ... FAIL");
    assert!(!run.stdout.contains("b.lua"), "{run}");
}

#[test]
fn several_paths_run_together_with_names_relative_to_each() {
    let sb = Sandbox::new();
    sb.tree("one", &[("a.lua", ""), ("sub/b.lua", "")]);
    sb.tree("two", &[("c.lua", "error('c fails')")]);
    sb.tree("three", &[("d.lua", "")]);
    let run = sb.provium(&["test", "-p", "1", "one", "two/c.lua", "three/d.lua"]);
    run.expect_code(1);
    for line in [
        "  a.lua ... ok",
        "  sub/b.lua ... ok",
        "  c.lua ... FAIL",
        "  d.lua ... ok",
    ] {
        run.assert_stdout_contains(line);
    }
    run.assert_stdout_contains("FAIL: 3 passed, 1 failed");
    // Each root keeps its own record.
    let rerun = sb.provium(&["list", "--rerun-failed", "one", "two/c.lua"]);
    assert_eq!(rerun.stdout, "c.lua\n", "{rerun}");
    sb.tree("four", &[("a.lua", "")]);
    let clash = sb.provium(&["test", "one", "four"]);
    clash.expect_code(1);
    clash.assert_stderr_contains("two test files are both named a.lua");
}
