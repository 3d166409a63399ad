//! CLI integration tests of the machine-readable reports on pure-Lua files, each read
//! back with a real parser: `--junit` with roxmltree, `--json` with serde_json,
//! `--ktap` with the kernel's own KTAP parser (`scripts/ktap-check`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, Sandbox};
use serde_json::Value;

/// Files covering every outcome: sub-tests passing, failing and todo, a file without
/// sub-tests, a file-level todo, an error outside any test, an infrastructure error
/// (the pool refuses a VM before anything boots) and a refused nested test.
fn sample_tree(sb: &Sandbox) {
    sb.tree(
        "t",
        &[
            (
                "pass.lua",
                "test('first', function() end)\n\
                 test('second one', function() assert_eq(2, 1 + 1) end)\n",
            ),
            (
                "fail.lua",
                "test('ok', function() end)\n\
                 test('bad', function() assert_eq(0, -13) end)\n\
                 test('escape', function() error(\"a<b & ]]> \\0 end\") end)\n",
            ),
            (
                "todo.lua",
                "test('later', function() todo('needs kernel 6.9') end)\n\
                 test('now', function() end)\n",
            ),
            ("plain.lua", "local x = 1\n"),
            ("wip.lua", "todo('not written yet')\n"),
            (
                "outside.lua",
                "test('a', function() end)\n\
                 error('command failed (exit 1): cat /proc/missing')\n",
            ),
            (
                "pool.lua",
                "test('boot', function()\n  provium.create():boot({ memory = '4096G' })\nend)\n",
            ),
            (
                "nested.lua",
                "test('outer', function() test('inner', function() end) end)\n",
            ),
        ],
    );
}

/// `provium test --mem 1G <extra> t` on the sample tree: the fixed pool refuses
/// pool.lua's VM at once, whatever the host.
fn run_sample(sb: &Sandbox, extra: &[&str]) -> Run {
    sample_tree(sb);
    let mut args = vec!["test", "--mem", "1G"];
    args.extend_from_slice(extra);
    args.push("t");
    let run = sb.provium(&args);
    run.expect_code(1);
    run
}

// ---- JUnit ----

/// A `<testsuite>`'s counts as written, checked against its own testcases.
#[derive(Debug, PartialEq, Eq)]
struct Suite {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
}

fn attr(node: roxmltree::Node, name: &str) -> usize {
    node.attribute(name)
        .unwrap_or_else(|| panic!("<{}> lacks {name}", node.tag_name().name()))
        .parse()
        .unwrap()
}

fn counts(node: roxmltree::Node) -> Suite {
    Suite {
        tests: attr(node, "tests"),
        failures: attr(node, "failures"),
        errors: attr(node, "errors"),
        skipped: attr(node, "skipped"),
    }
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

/// Parses the report and checks every count against the elements it counts; returns
/// the root's counts and each suite's, by name.
fn junit_suites(text: &str) -> (Suite, BTreeMap<String, Suite>) {
    let doc = roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let mut suites = BTreeMap::new();
    for suite in root.children().filter(|n| n.has_tag_name("testsuite")) {
        let name = suite.attribute("name").unwrap().to_string();
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let having = |tag: &str| cases.iter().filter(|c| child(**c, tag).is_some()).count();
        let found = Suite {
            tests: cases.len(),
            failures: having("failure"),
            errors: having("error"),
            skipped: having("skipped"),
        };
        assert_eq!(counts(suite), found, "suite {name}\n{text}");
        for case in &cases {
            assert_eq!(case.attribute("classname"), Some(name.as_str()));
            assert!(case.attribute("time").unwrap().parse::<f64>().is_ok());
        }
        suites.insert(name, found);
    }
    let totals = counts(root);
    let sum = |f: fn(&Suite) -> usize| suites.values().map(f).sum::<usize>();
    assert_eq!(
        totals,
        Suite {
            tests: sum(|s| s.tests),
            failures: sum(|s| s.failures),
            errors: sum(|s| s.errors),
            skipped: sum(|s| s.skipped),
        },
        "root totals\n{text}"
    );
    (totals, suites)
}

fn testcase<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    suite: &str,
    name: &str,
) -> roxmltree::Node<'a, 'i> {
    doc.descendants()
        .find(|n| {
            n.has_tag_name("testcase")
                && n.attribute("classname") == Some(suite)
                && n.attribute("name") == Some(name)
        })
        .unwrap_or_else(|| panic!("no testcase {suite} / {name}"))
}

fn suite(tests: usize, failures: usize, errors: usize, skipped: usize) -> Suite {
    Suite {
        tests,
        failures,
        errors,
        skipped,
    }
}

#[test]
fn junit_counts_suites_and_maps_failures_errors_and_skips() {
    let sb = Sandbox::new();
    run_sample(&sb, &["--junit", "r.xml"]);
    let bytes = fs::read(sb.root().join("r.xml")).unwrap();
    assert!(!bytes.contains(&0), "a raw NUL in the report");
    let text = String::from_utf8(bytes).unwrap();
    let (totals, suites) = junit_suites(&text);
    let expected: BTreeMap<String, Suite> = [
        ("fail.lua", suite(3, 2, 0, 0)),
        ("nested.lua", suite(1, 1, 0, 0)),
        ("outside.lua", suite(2, 1, 0, 0)),
        ("pass.lua", suite(2, 0, 0, 0)),
        ("plain.lua", suite(1, 0, 0, 0)),
        ("pool.lua", suite(1, 0, 1, 0)),
        ("todo.lua", suite(2, 0, 0, 1)),
        ("wip.lua", suite(1, 0, 0, 1)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(suites, expected, "{text}");
    assert_eq!(totals, suite(13, 4, 1, 2));

    let doc = roxmltree::Document::parse(&text).unwrap();
    let bad = child(testcase(&doc, "fail.lua", "bad"), "failure").unwrap();
    assert_eq!(bad.attribute("message"), Some("expected 0, got -13"));
    assert_eq!(bad.attribute("type"), Some("failed"));
    // `<`, `&` and `]]>` escaped by the XML writer; the NUL written visibly.
    let escape = child(testcase(&doc, "fail.lua", "escape"), "failure").unwrap();
    assert_eq!(escape.attribute("message"), Some("a<b & ]]> \\x00 end"));
    assert_eq!(escape.text(), Some("a<b & ]]> \\x00 end"));
    // A file without sub-tests is one testcase named after it.
    let plain = testcase(&doc, "plain.lua", "plain.lua");
    assert_eq!(plain.children().filter(|n| n.is_element()).count(), 0);
    let wip = child(testcase(&doc, "wip.lua", "wip.lua"), "skipped").unwrap();
    assert_eq!(wip.attribute("message"), Some("not written yet"));
    let later = child(testcase(&doc, "todo.lua", "later"), "skipped").unwrap();
    assert_eq!(later.attribute("message"), Some("needs kernel 6.9"));
    // The error outside any test is a testcase named after the file.
    let outside = child(testcase(&doc, "outside.lua", "outside.lua"), "failure").unwrap();
    assert_eq!(
        outside.text(),
        Some("command failed (exit 1): cat /proc/missing")
    );
    // The pool refusing a VM is the infrastructure: an error, not a failure.
    let pool = child(testcase(&doc, "pool.lua", "boot"), "error").unwrap();
    assert_eq!(pool.attribute("type"), Some("error"));
    assert!(pool.text().unwrap().contains("4194304M memory"), "{text}");
    // Failing files name their kept log.
    let log = doc
        .descendants()
        .find(|n| n.has_tag_name("property") && n.attribute("name") == Some("log"))
        .unwrap();
    assert!(Path::new(log.attribute("value").unwrap()).exists());
}

#[test]
fn junit_marks_a_timeout_as_an_error_of_type_timed_out() {
    let sb = Sandbox::new();
    sb.tree("t", &[("spin.lua", "while true do end\n")]);
    let run = sb.provium(&[
        "test",
        "--timeout",
        "1",
        "--junit",
        "r.xml",
        "--ktap",
        "r.ktap",
        "t",
    ]);
    run.expect_code(1);
    let text = fs::read_to_string(sb.root().join("r.xml")).unwrap();
    let (totals, _) = junit_suites(&text);
    assert_eq!(totals, suite(1, 0, 1, 0));
    let doc = roxmltree::Document::parse(&text).unwrap();
    let error = child(testcase(&doc, "spin.lua", "spin.lua"), "error").unwrap();
    assert_eq!(error.attribute("type"), Some("timed-out"), "{text}");
    assert!(error.attribute("message").unwrap().contains("1s"), "{text}");
    let ktap = fs::read_to_string(sb.root().join("r.ktap")).unwrap();
    assert!(ktap.contains("\nnot ok 1 spin.lua # TIMEOUT\n"), "{ktap}");
}

/// A file that fails its first attempt and passes the next (state in a host file),
/// and one that always fails.
fn retry_tree(sb: &Sandbox) {
    sb.tree(
        "t",
        &[
            (
                "flaky.lua",
                "local state = os.getenv('FLAKY_STATE')\n\
                 test('sometimes', function()\n\
                   local seen = io.open(state, 'r')\n\
                   if seen then seen:close() return end\n\
                   local f = assert(io.open(state, 'w'))\n\
                   f:write('failed once\\n')\n\
                   f:close()\n\
                   error('first attempt fails')\n\
                 end)\n",
            ),
            (
                "always.lua",
                "test('never', function() error('always fails') end)\n",
            ),
        ],
    );
}

fn run_retries(sb: &Sandbox, reports: &[&str]) -> Run {
    retry_tree(sb);
    let state = sb.root().join("flaky.state");
    let mut args = vec!["test", "-p", "1", "--retries", "1"];
    args.extend_from_slice(reports);
    args.push("t");
    let run = sb.provium_with_env(&args, &[("FLAKY_STATE", state.to_str().unwrap())]);
    run.expect_code(1);
    run.assert_stdout_contains("  flaky.lua ... ok (1 test, ");
    run.assert_stdout_contains(", flaky: passed on attempt 2)\n");
    run
}

#[test]
fn junit_records_flaky_failures_and_reruns() {
    let sb = Sandbox::new();
    run_retries(&sb, &["--junit", "r.xml"]);
    let text = fs::read_to_string(sb.root().join("r.xml")).unwrap();
    let (_, suites) = junit_suites(&text);
    assert_eq!(suites["flaky.lua"], suite(1, 0, 0, 0), "{text}");
    assert_eq!(suites["always.lua"], suite(1, 1, 0, 0), "{text}");
    let doc = roxmltree::Document::parse(&text).unwrap();
    let sometimes = testcase(&doc, "flaky.lua", "sometimes");
    let flaky: Vec<_> = sometimes
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    assert_eq!(flaky, ["flakyFailure"], "{text}");
    let failure = child(sometimes, "flakyFailure").unwrap();
    assert_eq!(failure.attribute("message"), Some("first attempt fails"));
    assert_eq!(
        child(failure, "stackTrace").and_then(|n| n.text()),
        Some("first attempt fails")
    );
    let never = testcase(&doc, "always.lua", "never");
    let tags: Vec<_> = never
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    assert_eq!(tags, ["failure", "rerunFailure"], "{text}");
    assert_eq!(
        child(never, "rerunFailure").unwrap().attribute("message"),
        Some("always fails")
    );
}

#[test]
fn report_paths_are_checked_before_the_run() {
    let sb = Sandbox::new();
    sb.tree("t", &[("a.lua", "")]);
    for (flag, kind) in [("--junit", "JUnit"), ("--ktap", "KTAP"), ("--json", "JSON")] {
        let run = sb.provium(&["test", flag, "missing/dir/r", "t"]);
        run.expect_code(1);
        assert_eq!(
            run.stderr,
            format!(
                "error: cannot create the {kind} report missing/dir/r: \
                 No such file or directory (os error 2)\n"
            ),
            "{run}"
        );
        assert_eq!(run.stdout, "", "nothing ran\n{run}");
    }
    assert!(sb.run_dirs().is_empty());
}

// ---- JSON ----

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}\n{text}")))
        .collect()
}

fn kind(event: &Value) -> &str {
    event["type"].as_str().unwrap()
}

#[test]
fn json_lines_record_every_event_in_order() {
    let sb = Sandbox::new();
    run_sample(&sb, &["-p", "1", "--json", "r.json"]);
    let events = json_lines(&fs::read_to_string(sb.root().join("r.json")).unwrap());
    let first = &events[0];
    assert_eq!(kind(first), "run_started");
    assert_eq!(first["schema"], 1);
    assert_eq!(first["files"], 8);
    assert!(events[1..].iter().all(|e| e.get("schema").is_none()));
    let last = events.last().unwrap();
    assert_eq!(kind(last), "run_finished");
    assert_eq!(
        last["counts"],
        serde_json::json!({"passed": 3, "failed": 3, "error": 1, "timed-out": 0,
                           "interrupted": 0, "todo": 1})
    );
    assert_eq!(
        (last["passed"].as_u64(), last["failed"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(last["not_run"], 0);

    // Per file: one start, then one end; its sub-tests between the two, of its
    // attempt, as many as its end counts.
    let mut started: BTreeMap<String, usize> = BTreeMap::new();
    let mut finished: BTreeMap<String, Value> = BTreeMap::new();
    let mut tests: BTreeMap<String, usize> = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        let file = event["file"].as_str().unwrap_or_default().to_string();
        match kind(event) {
            "file_started" => {
                assert!(started.insert(file, i).is_none(), "started twice");
            }
            "file_finished" => {
                assert!(started.contains_key(&file), "finished before started");
                assert_eq!(event["final"], true);
                assert!(finished.insert(file, event.clone()).is_none());
            }
            "test_finished" => {
                assert!(started.contains_key(&file), "sub-test before its file");
                assert!(!finished.contains_key(&file), "sub-test after its file");
                assert_eq!(event["attempt"], 1);
                *tests.entry(file).or_default() += 1;
            }
            "run_started" | "run_finished" => assert!(i == 0 || i == events.len() - 1),
            // Host-dependent (the KVM probe): allowed anywhere.
            "notice" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(finished.len(), 8);
    for (file, end) in &finished {
        let expected = end["tests"].as_u64().unwrap() as usize;
        assert_eq!(tests.get(file).copied().unwrap_or(0), expected, "{file}");
    }
    assert_eq!(finished["pool.lua"]["outcome"], "error");
    assert_eq!(finished["wip.lua"]["outcome"], "todo");
    assert_eq!(finished["wip.lua"]["message"], "not written yet");
    assert_eq!(
        finished["outside.lua"]["message"],
        "command failed (exit 1): cat /proc/missing"
    );
    assert!(finished["fail.lua"]["log"].is_string());
    assert!(finished["pass.lua"]["log"].is_null());
    let escape = events
        .iter()
        .find(|e| kind(e) == "test_finished" && e["name"] == "escape")
        .unwrap();
    // JSON carries the NUL itself.
    assert_eq!(escape["message"], "a<b & ]]> \u{0} end");
}

#[test]
fn json_of_a_single_file_is_four_events() {
    let sb = Sandbox::new();
    sb.tree("t", &[("one.lua", "local x = 1\n")]);
    sb.provium(&["test", "--json", "r.json", "t"])
        .expect_code(0);
    let events = json_lines(&fs::read_to_string(sb.root().join("r.json")).unwrap());
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "file_started",
            "file_finished",
            "run_finished"
        ]
    );
    assert_eq!(events[2]["outcome"], "passed");
    assert_eq!(events[2]["attempt"], 1);
    assert_eq!(events[3]["counts"]["passed"], 1);
}

#[test]
fn json_records_every_attempt() {
    let sb = Sandbox::new();
    run_retries(&sb, &["--json", "r.json"]);
    let events = json_lines(&fs::read_to_string(sb.root().join("r.json")).unwrap());
    let attempts: Vec<(String, u64, String, bool, bool)> = events
        .iter()
        .filter(|e| kind(e) == "file_finished")
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_string(),
                e["attempt"].as_u64().unwrap(),
                e["outcome"].as_str().unwrap().to_string(),
                e["final"].as_bool().unwrap(),
                e["flaky"].as_bool().unwrap(),
            )
        })
        .collect();
    let row = |f: &str, a, o: &str, fin, flaky| (f.to_string(), a, o.to_string(), fin, flaky);
    assert_eq!(
        attempts,
        [
            row("always.lua", 1, "failed", false, false),
            row("always.lua", 2, "failed", true, false),
            row("flaky.lua", 1, "failed", false, false),
            row("flaky.lua", 2, "passed", true, true),
        ]
    );
    let starts: Vec<(String, u64)> = events
        .iter()
        .filter(|e| kind(e) == "file_started")
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_string(),
                e["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(starts.len(), 4, "{starts:?}");
    let end = events.last().unwrap();
    assert_eq!(
        (end["passed"].as_u64(), end["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(end["flaky"], 1);
}

#[test]
fn json_on_stdout_leaves_it_pure_json() {
    let sb = Sandbox::new();
    sample_tree(&sb);
    let run = sb.provium(&["test", "--mem", "1G", "--json", "-", "t"]);
    run.expect_code(1);
    let events = json_lines(&run.stdout);
    assert_eq!(kind(&events[0]), "run_started");
    assert_eq!(kind(events.last().unwrap()), "run_finished");
    // The human report went to stderr.
    run.assert_stderr_contains("provium test\n");
    run.assert_stderr_contains("FAIL: 4 passed, 4 failed\n");

    // Nothing to rerun says so on stderr too.
    sb.write("t2/a.lua", "");
    let rerun = sb.provium(&["test", "--rerun-failed", "--json", "-", "t2"]);
    rerun.expect_code(0);
    assert_eq!(rerun.stdout, "", "{rerun}");
    rerun.assert_stderr_contains("nothing to rerun");
}

// ---- KTAP ----

/// What `scripts/ktap-check` made of a report.
struct KtapCheck {
    /// `(depth, name, status)` per test, depth 1 for a file.
    tree: Vec<(usize, String, String)>,
    verdict: String,
}

impl KtapCheck {
    fn status(&self, depth: usize, name: &str) -> &str {
        self.tree
            .iter()
            .find(|(d, n, _)| *d == depth && n == name)
            .map(|(_, _, s)| s.as_str())
            .unwrap_or_else(|| panic!("no test {name} at depth {depth}: {:?}", self.tree))
    }
}

/// Runs the kernel's parser on `report`; `None` (the test is skipped) without python3.
fn ktap_check(report: &Path) -> Option<KtapCheck> {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: python3 is missing, the kernel's KTAP parser cannot run");
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ktap-check");
    let output = Command::new(&script).arg(report).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let shown = format!(
        "{} {}\nexit: {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- report ---\n{}",
        script.display(),
        report.display(),
        output.status.code(),
        fs::read_to_string(report).unwrap_or_default()
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "the parser rejected it\n{shown}"
    );
    let tree = stdout
        .lines()
        .skip_while(|l| *l != "tree:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let depth = (l.len() - l.trim_start().len()) / 2;
            let (name, status) = l.trim_start().rsplit_once(": ").unwrap();
            (depth, name.to_string(), status.to_string())
        })
        .collect();
    let verdict = stdout
        .lines()
        .find(|l| l.starts_with("ktap-check: ") && l.contains(": accepted"))
        .unwrap_or_else(|| panic!("no verdict\n{shown}"))
        .split_once(": accepted")
        .unwrap()
        .1
        .to_string();
    Some(KtapCheck { tree, verdict })
}

#[test]
fn ktap_is_accepted_by_the_kernel_parser_with_the_right_counts() {
    let sb = Sandbox::new();
    run_sample(&sb, &["--ktap", "r.ktap"]);
    let path = sb.root().join("r.ktap");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("KTAP version 1\n1..8\n"), "{text}");
    // Files in completion order, numbered 1..N.
    let numbers: Vec<usize> = text
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .map(|l| {
            let rest = l.strip_prefix("not ").unwrap_or(l);
            rest[3..].split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>(), "{text}");
    assert!(text.contains(" wip.lua # SKIP not written yet\n"), "{text}");
    assert!(
        text.contains("    ok 1 later # SKIP needs kernel 6.9\n"),
        "{text}"
    );
    assert!(
        text.contains("    # failed: a<b & ]]> \\x00 end\n"),
        "{text}"
    );
    assert!(text.contains(" pool.lua # ERROR\n"), "{text}");

    let Some(check) = ktap_check(&path) else {
        return;
    };
    assert_eq!(
        check.verdict,
        ", status FAILURE: 13 tests: 6 passed, 5 failed, 0 crashed, 2 skipped"
    );
    for (file, status) in [
        ("pass.lua", "SUCCESS"),
        ("fail.lua", "FAILURE"),
        ("todo.lua", "SUCCESS"),
        ("plain.lua", "SUCCESS"),
        ("wip.lua", "SKIPPED"),
        ("outside.lua", "FAILURE"),
        ("pool.lua", "FAILURE"),
        ("nested.lua", "FAILURE"),
    ] {
        assert_eq!(check.status(1, file), status, "{file}");
    }
    assert_eq!(check.status(2, "second one"), "SUCCESS");
    assert_eq!(check.status(2, "escape"), "FAILURE");
    assert_eq!(check.status(2, "later"), "SKIPPED");
    assert_eq!(check.status(2, "outside test()"), "FAILURE");
    assert_eq!(check.tree.iter().filter(|(d, ..)| *d == 1).count(), 8);
}

#[test]
fn all_three_reports_in_one_run_agree() {
    let sb = Sandbox::new();
    let run = run_sample(
        &sb,
        &["--json", "r.json", "--junit", "r.xml", "--ktap", "r.ktap"],
    );
    run.assert_stdout_contains("FAIL: 4 passed, 4 failed\n");
    let events = json_lines(&fs::read_to_string(sb.root().join("r.json")).unwrap());
    let files = events
        .iter()
        .filter(|e| kind(e) == "file_finished" && e["final"] == true)
        .count();
    let xml = fs::read_to_string(sb.root().join("r.xml")).unwrap();
    let (totals, suites) = junit_suites(&xml);
    let ktap = fs::read_to_string(sb.root().join("r.ktap")).unwrap();
    assert_eq!(files, 8);
    assert_eq!(suites.len(), 8);
    assert!(ktap.starts_with("KTAP version 1\n1..8\n"));
    let Some(check) = ktap_check(&sb.root().join("r.ktap")) else {
        return;
    };
    // One KTAP leaf per JUnit testcase: the same tests, counted alike.
    assert_eq!(
        check.verdict,
        format!(
            ", status FAILURE: {} tests: {} passed, {} failed, 0 crashed, {} skipped",
            totals.tests,
            totals.tests - totals.failures - totals.errors - totals.skipped,
            totals.failures + totals.errors,
            totals.skipped
        )
    );
}
