//! CLI integration tests: the built `provium` binary over small pure-Lua trees.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{redact, Run, Sandbox};

#[test]
fn version_forms() {
    let sb = Sandbox::new();
    let run = sb.provium(&["version"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "0.1.0\n", "{run}");
    let run = sb.provium(&["--version"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "provium 0.1.0\n", "{run}");
}

#[test]
fn help_describes_every_flag() {
    let sb = Sandbox::new();
    let run = sb.provium(&["test", "--help"]);
    run.expect_code(0);
    for flag in [
        "-p <N>",
        "-f <PATTERN>",
        "--fail-fast",
        "--rerun-failed",
        "--mem <SIZE>",
        "--cpus <N>",
    ] {
        run.assert_stdout_contains(flag);
    }
    let run = sb.provium(&["--help"]);
    run.expect_code(0);
    run.assert_stdout_contains("test");
    run.assert_stdout_contains("version");
}

#[test]
fn bad_arguments_give_one_line_and_exit_1() {
    let sb = Sandbox::new();
    sb.write("notes.txt", "hello");
    let cases: &[(&[&str], &str)] = &[
        (&["test", "--bogus", "t"], "'--bogus'"),
        (&["test"], "<PATH>"),
        (&["test", "-p", "0", "t"], "must be at least 1"),
        (&["test", "--mem", "lots", "t"], "invalid size 'lots'"),
        (&["test", "--cpus", "x", "t"], "--cpus"),
        (&["test", "missing_dir"], "missing_dir does not exist"),
        (
            &["test", "notes.txt"],
            "notes.txt is neither a directory nor a .lua file",
        ),
        (&["frobnicate"], "frobnicate"),
        (&[], "no command given"),
    ];
    for (args, needle) in cases {
        let run = sb.provium(args);
        run.expect_code(1);
        run.assert_stderr_contains(needle);
        assert_eq!(run.stderr.lines().count(), 1, "expected one line\n{run}");
        assert!(run.stderr.starts_with("error: "), "{run}");
        assert_eq!(run.stdout, "", "{run}");
    }
}

fn sample_tree(sb: &Sandbox) {
    sb.tree(
        "t",
        &[
            ("boot.lua", "local x = 1\n"),
            (
                "token.lua",
                "test(\"a\", function() assert(true) end)\ntest(\"b\", function() assert_eq(2, 1 + 1) end)\n",
            ),
            (
                "access.lua",
                "test(\"basic_allow\", function() end)\n\
                 test(\"deny_first\", function() assert_eq(0, -13) end)\n\
                 error(\"command failed (exit 1): cat /proc/missing\")\n",
            ),
            ("helpers/util.lua", "return { answer = 42 }\n"),
            ("fixtures/setup.lua", "error('fixtures must not run as tests')\n"),
            ("helpers/fixtures/deep.lua", "error('nested fixtures must not run')\n"),
            ("syntax.lua", "local = 1\n"),
            ("todo_file.lua", "todo(\"not yet\")\nerror(\"skipped\")\n"),
            (
                "subtodo.lua",
                "test(\"later\", function() todo(\"needs kernel 6.9\") error(\"skipped\") end)\n\
                 test(\"now\", function() end)\n",
            ),
            ("README.md", "not a test"),
        ],
    );
}

#[test]
fn sequential_output_is_exact() {
    let sb = Sandbox::new();
    sample_tree(&sb);
    let run = sb.provium(&["test", "-p", "1", "t"]);
    run.expect_code(1);
    let runs = sb.runs.display();
    run.assert_stdout(&format!(
        "provium test

  access.lua ... FAIL (T)
    · basic_allow ... ok
    · deny_first ... FAIL: expected 0, got -13
    command failed (exit 1): cat /proc/missing
  boot.lua ... ok (T)
  helpers/util.lua ... ok (T)
  subtodo.lua ... ok (2 tests, T)
    · later ... todo: needs kernel 6.9
    · now ... ok
  syntax.lua ... FAIL (T)
    t/syntax.lua:1: <name> expected near '='
  todo_file.lua ... todo: not yet (T)
  token.lua ... ok (2 tests, T)
    · a ... ok
    · b ... ok

Failed test logs:
  access.lua                               → {runs}/run-ID/access.lua.log
  syntax.lua                               → {runs}/run-ID/syntax.lua.log

FAIL: 5 passed, 2 failed
"
    ));
    assert!(
        !run.stdout.contains('\x1b'),
        "escape codes when piped\n{run}"
    );
}

#[test]
fn parallel_run_reports_every_file_once() {
    let sb = Sandbox::new();
    sample_tree(&sb);
    let run = sb.provium(&["test", "-p", "4", "t"]);
    run.expect_code(1);
    let mut names: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains(" ... ") && !l.contains('·'))
        .map(|l| l.trim_start().split(" ... ").next().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "access.lua",
            "boot.lua",
            "helpers/util.lua",
            "subtodo.lua",
            "syntax.lua",
            "todo_file.lua",
            "token.lua"
        ],
        "{run}"
    );
    run.assert_stdout_contains("FAIL: 5 passed, 2 failed\n");
    // Each file's block stays whole: a sub-test line always follows its own file.
    let lines: Vec<&str> = run.stdout.lines().collect();
    let a = lines
        .iter()
        .position(|l| l.starts_with("  token.lua"))
        .unwrap();
    assert_eq!(lines[a + 1], "    · a ... ok", "{run}");
    assert_eq!(lines[a + 2], "    · b ... ok", "{run}");
}

#[test]
fn all_passing_run_exits_0_and_leaves_no_run_dir() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[("a.lua", "test('x', function() end)\n"), ("b/c.lua", "")],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(0);
    assert!(run.stdout.ends_with("\nok: 2 passed\n"), "{run}");
    assert!(!run.stdout.contains("Failed test logs"), "{run}");
    assert!(
        sb.run_dirs().is_empty(),
        "passing run left {:?}",
        sb.run_dirs()
    );
}

#[test]
fn single_file_argument_uses_its_name() {
    let sb = Sandbox::new();
    sb.tree("t/deep", &[("one.lua", "test('x', function() end)\n")]);
    let run = sb.provium(&["test", "t/deep/one.lua"]);
    run.expect_code(0);
    run.assert_stdout(
        "provium test\n\n  one.lua ... ok (1 test, T)\n    · x ... ok\n\nok: 1 passed\n",
    );
}

#[test]
fn filters_are_repeatable_and_match_relative_paths() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            ("net/tcp.lua", ""),
            ("net/udp.lua", ""),
            ("fs/ext4.lua", ""),
            ("token.lua", ""),
            ("session.lua", ""),
        ],
    );
    let run = sb.provium(&["test", "-p", "1", "-f", "token", "-f", "net/t", "t"]);
    run.expect_code(0);
    run.assert_stdout(
        "provium test\n\n  net/tcp.lua ... ok (T)\n  token.lua ... ok (T)\n\nok: 2 passed\n",
    );
    // The root's own name is not part of the matched path.
    let none = sb.provium(&["test", "-f", "t/net", "t"]);
    none.expect_code(1);
    none.assert_stderr_contains("no test files under t match -f t/net");
}

#[test]
fn sequential_runs_in_sorted_order() {
    let sb = Sandbox::new();
    // Byte-wise: uppercase sorts first, '-' (0x2d) before '/' (0x2f) before digits.
    sb.tree(
        "t",
        &[
            ("b.lua", ""),
            ("a/z.lua", ""),
            ("a-b.lua", ""),
            ("Z.lua", ""),
            ("a0.lua", ""),
        ],
    );
    let run = sb.provium(&["test", "-p", "1", "t"]);
    run.expect_code(0);
    let order: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .map(|l| l.split(" ... ").next().unwrap())
        .collect();
    assert_eq!(
        order,
        ["Z.lua", "a-b.lua", "a/z.lua", "a0.lua", "b.lua"],
        "{run}"
    );
}

#[test]
fn fail_fast_leaves_files_unrun() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[("a.lua", "error('first')\n"), ("b.lua", ""), ("c.lua", "")],
    );
    let run = sb.provium(&["test", "-p", "1", "--fail-fast", "t"]);
    run.expect_code(1);
    let runs = sb.runs.display();
    run.assert_stdout(&format!(
        "provium test\n\n  a.lua ... FAIL (T)\n    first\n\nFailed test logs:\n  {:<40} → {runs}/run-ID/a.lua.log\n\nFAIL: 0 passed, 1 failed, 2 not run\n",
        "a.lua"
    ));
}

#[test]
fn rerun_failed_is_per_root() {
    let sb = Sandbox::new();
    sb.tree("one", &[("bad.lua", "error('broken')\n"), ("good.lua", "")]);
    sb.tree(
        "two",
        &[("other.lua", "error('also broken')\n"), ("fine.lua", "")],
    );

    let never = sb.provium(&["test", "--rerun-failed", "one"]);
    never.expect_code(0);
    never.assert_stdout_contains("nothing to rerun");
    assert!(!never.stdout.contains("provium test"), "{never}");

    sb.provium(&["test", "one"]).expect_code(1);
    sb.provium(&["test", "two"]).expect_code(1);

    let rerun = sb.provium(&["test", "--rerun-failed", "one"]);
    rerun.expect_code(1);
    rerun.assert_stdout_contains("  bad.lua ... FAIL");
    assert!(!rerun.stdout.contains("good.lua"), "{rerun}");
    assert!(!rerun.stdout.contains("other.lua"), "{rerun}");

    // Fixing the file: the rerun passes, and then there is nothing left to rerun.
    sb.write("one/bad.lua", "");
    let fixed = sb.provium(&["test", "--rerun-failed", "one"]);
    fixed.expect_code(0);
    fixed.assert_stdout("provium test\n\n  bad.lua ... ok (T)\n\nok: 1 passed\n");
    let nothing = sb.provium(&["test", "--rerun-failed", "one"]);
    nothing.expect_code(0);
    nothing.assert_stdout_contains("nothing to rerun");

    // The other root still remembers its own failure.
    let two = sb.provium(&["test", "--rerun-failed", "two"]);
    two.expect_code(1);
    two.assert_stdout_contains("  other.lua ... FAIL");
    assert!(!two.stdout.contains("fine.lua"), "{two}");
}

#[test]
fn logs_are_kept_for_failures_only() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            (
                "pass.lua",
                "print('quiet please')\ntest('ok', function() end)\n",
            ),
            (
                "sub/fail.lua",
                "print('visible in the log')\n\
                 local function helper() assert_eq('a', 'b', 'letters') end\n\
                 test('bad', function() helper() end)\n",
            ),
        ],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    assert!(
        !run.stdout.contains("quiet please"),
        "print leaked to stdout\n{run}"
    );
    run.assert_stdout_contains("    · bad ... FAIL: letters: expected a, got b\n");

    let logs = run.listed_logs();
    assert_eq!(logs.len(), 1, "{run}");
    let log = &logs[0];
    assert!(log.ends_with("sub/fail.lua.log"), "{run}");
    let text = fs::read_to_string(log).unwrap();
    assert!(text.contains("visible in the log\n"), "{text}");
    assert!(
        text.contains("t/sub/fail.lua:2: letters: expected a, got b"),
        "{text}"
    );
    assert!(text.contains("stack traceback:"), "{text}");
    assert!(
        text.contains("in local 'helper'")
            || text.contains("in upvalue 'helper'")
            || text.contains("helper"),
        "{text}"
    );

    let run_dir = log.parent().unwrap().parent().unwrap();
    let mode = fs::metadata(run_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "run dir {}", run_dir.display());
    assert!(!run_dir.join("pass.lua.log").exists(), "passing log kept");
    assert!(
        run_dir.starts_with(&sb.runs),
        "run dir outside PROVIUM_RUNS_DIR"
    );
}

#[test]
fn inline_tests_run_in_order_and_errors_outside_fail_the_file_only() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            (
                "order.lua",
                "local seen = {}\n\
                 test('first', function() seen[#seen + 1] = 'first' end)\n\
                 seen[#seen + 1] = 'between'\n\
                 test('second', function() assert_eq('first,between', table.concat(seen, ',')) end)\n\
                 test('raises', function() error('inside') end)\n\
                 test('after a failure', function() end)\n",
            ),
            ("runtime.lua", "test('fine', function() end)\nlocal t = nil\nprint(t.field)\n"),
            ("z_ok.lua", ""),
        ],
    );
    let run = sb.provium(&["test", "-p", "1", "t"]);
    run.expect_code(1);
    let runs = sb.runs.display();
    run.assert_stdout(&format!(
        "provium test

  order.lua ... FAIL (T)
    · first ... ok
    · second ... ok
    · raises ... FAIL: inside
    · after a failure ... ok
  runtime.lua ... FAIL (T)
    · fine ... ok
    attempt to index a nil value (local 't')
  z_ok.lua ... ok (T)

Failed test logs:
  order.lua                                → {runs}/run-ID/order.lua.log
  runtime.lua                              → {runs}/run-ID/runtime.lua.log

FAIL: 1 passed, 2 failed
"
    ));
}

#[test]
fn assertions_format_their_messages() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "a.lua",
            "test('hex', function() assert_eq(provium.pack('u32 u16', 1, 2), provium.pack('u32 u16', 1, 3)) end)\n\
             test('text', function() assert_eq('ok', 'ok\\n') end)\n\
             test('types', function() assert_eq(1, '1') end)\n\
             test('plain assert', function() assert(false) end)\n\
             test('assert msg', function() assert(nil, 'custom') end)\n\
             test('contains', function() assert_contains('hello world', 'bye', 'greeting') end)\n\
             test('long haystack', function() assert_contains(string.rep('x', 500), 'y') end)\n\
             test('assert passes values', function() local a, b = assert(1, 2) assert_eq(2, b) end)\n\
             test('contains ok', function() assert_contains('hello world', 'o w') end)\n",
        )],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    let x100 = "x".repeat(100);
    let expected = [
        "    · hex ... FAIL: expected \"01 00 00 00 02 00\", got \"01 00 00 00 03 00\"",
        "    · text ... FAIL: expected \"ok\", got \"ok\\n\"",
        "    · types ... FAIL: expected 1 (number), got 1 (string)",
        "    · plain assert ... FAIL: assertion failed",
        "    · assert msg ... FAIL: custom",
        "    · contains ... FAIL: greeting: expected \"hello world\" to contain \"bye\"",
        &format!("    · long haystack ... FAIL: expected \"{x100}…\" (500 bytes) to contain \"y\""),
        "    · assert passes values ... ok",
        "    · contains ok ... ok",
    ];
    for line in expected {
        assert!(
            run.stdout.contains(&format!("{line}\n")),
            "missing {line:?}\n{run}"
        );
    }
}

#[test]
fn pack_and_unpack_edge_values() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "pack.lua",
            r#"
local p, u = provium.pack, provium.unpack
test("u64 max is -1", function()
  assert_eq(string.rep("\xff", 8), p("u64", -1))
  assert_eq(-1, u("u64", string.rep("\xff", 8)))
  assert_eq(math.mininteger, u("i64", p("i64", math.mininteger)))
  assert_eq(math.maxinteger, u("u64", p("u64", math.maxinteger)))
end)
test("exact above 2^53", function()
  local v = (1 << 53) + 1
  assert_eq(v, u("u64", p("u64", v)))
end)
test("little endian and signed", function()
  assert_eq("\x01\x02\x03\x04", p("u32", 0x04030201))
  local a, b, c = u("i8 i16 u16", "\xff\xfe\xff\xfe\xff")
  assert_eq(-1, a) assert_eq(-2, b) assert_eq(0xfffe, c)
end)
test("trailing data ignored", function() assert_eq(1, u("u8", "\x01\x02")) end)
local function err(f, ...) local ok, e = pcall(f, ...) assert(not ok, "expected an error") return e end
test("overflow raises", function()
  assert_contains(err(p, "u8", 256), "out of range for u8")
  assert_contains(err(p, "i16", 32768), "out of range for i16")
  assert_contains(err(p, "u32", -1), "out of range for u32")
  assert_contains(err(p, "i32", 2147483648), "out of range for i32")
end)
test("short data raises", function()
  assert_contains(err(u, "u32", "ab"), 'needs 4 bytes, data has 2')
end)
test("non-integers raise", function()
  assert_contains(err(p, "u8", 1.5), "not an integer")
  assert_contains(err(p, "u8", "1"), "not an integer")
  assert_contains(err(p, "u8x", 1), "unknown specifier 'u8x'")
  assert_contains(err(p, "u8 u8", 1), "2 fields but 1 values")
end)
test("errors are strings located at the caller", function()
  local ok, e = pcall(function() local v = p("u8", 300) return v end)
  assert_eq("string", type(e))
  assert(e:match("^t/pack%.lua:%d+: provium%.pack: value 1 %(300%) is out of range for u8$"), e)
end)
"#,
        )],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(0);
    run.assert_stdout_contains("  pack.lua ... ok (8 tests, ");
}

#[test]
fn todo_in_tests_and_files_never_fails() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            (
                "a.lua",
                "test('t', function() todo() end)\ntest('u', function() todo('why') end)\n",
            ),
            ("b.lua", "test('bad', function() error('x') end)\ntodo()\n"),
        ],
    );
    let run = sb.provium(&["test", "-p", "1", "t"]);
    run.expect_code(0);
    run.assert_stdout(
        "provium test\n\n  a.lua ... ok (2 tests, T)\n    · t ... todo\n    · u ... todo: why\n  b.lua ... todo (T)\n    · bad ... FAIL: x\n\nok: 2 passed\n",
    );
}

#[test]
fn require_searches_the_test_root_and_os_exit_ends_only_the_file() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            ("lib/util.lua", "return { double = function(x) return 2 * x end }\n"),
            ("deep/user.lua", "local util = require('lib.util')\ntest('req', function() assert_eq(4, util.double(2)) end)\n"),
            ("exit0.lua", "test('a', function() end)\nos.exit(0)\nerror('not reached')\n"),
            ("exit3.lua", "os.exit(3)\n"),
            ("zz.lua", "test('still runs', function() end)\n"),
        ],
    );
    let run = sb.provium(&["test", "-p", "1", "t"]);
    run.expect_code(1);
    run.assert_stdout_contains("  deep/user.lua ... ok (1 test, ");
    run.assert_stdout_contains("  exit0.lua ... ok (1 test, ");
    run.assert_stdout_contains("  exit3.lua ... FAIL (");
    run.assert_stdout_contains("    os.exit(3) called\n");
    run.assert_stdout_contains("  zz.lua ... ok (1 test, ");
}

#[test]
fn nested_tests_and_bad_test_arguments_fail_clearly() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "a.lua",
            "test('outer', function() test('inner', function() end) end)\n\
             test(42, function() end)\n\
             test('no fn', nil)\n",
        )],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    run.assert_stdout_contains(
        "    · outer ... FAIL: test(\"inner\") inside test(\"outer\"): sub-tests cannot be nested\n",
    );
    run.assert_stdout_contains("    · 42 ... ok\n");
    run.assert_stdout_contains("    test(\"no fn\", fn): fn must be a function, got nil\n");
}

#[test]
fn resource_pool_line_follows_the_header() {
    let sb = Sandbox::new();
    sb.tree("t", &[("a.lua", "")]);
    let run = sb.provium(&["test", "--mem", "4G", "--cpus", "8", "t"]);
    run.expect_code(0);
    run.assert_stdout("provium test\n\nresource pool: 4096M memory, 8 CPUs\n\n  a.lua ... ok (T)\n\nok: 1 passed\n");
    let run = sb.provium(&["test", "--cpus", "1", "t"]);
    run.assert_stdout_contains("resource pool: unlimited memory, 1 CPU\n\n");
}

#[test]
fn no_escape_codes_when_piped_even_with_colour_capable_terminal_env() {
    let sb = Sandbox::new();
    sb.tree("t", &[("a.lua", "error('x')\n"), ("b.lua", "")]);
    let output = Command::new(env!("CARGO_BIN_EXE_provium"))
        .args(["test", "t"])
        .current_dir(sb.root())
        .env("PROVIUM_RUNS_DIR", &sb.runs)
        .env("TERM", "xterm-256color")
        .env("CLICOLOR_FORCE", "1")
        .output()
        .unwrap();
    let run = Run::new(&["test", "t"], sb.root(), output);
    run.expect_code(1);
    assert!(!run.stdout.contains('\x1b'), "{run}");
    assert!(!run.stdout.contains('\r'), "{run}");
}

#[test]
fn interrupt_stops_the_run_and_prints_the_summary() {
    interrupt_while_b_runs("while true do end\n");
}

#[test]
fn interrupt_is_heard_while_a_file_is_inside_os_execute() {
    // C's system() ignores SIGINT in the whole process while its command runs.
    interrupt_while_b_runs("os.execute('sleep 30')\n");
}

#[test]
fn os_execute_keeps_lua_results_and_logs_output() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "a.lua",
            "assert_eq(true, os.execute())\n\
             local ok, how, code = os.execute('echo to-the-log; exit 3')\n\
             assert_eq(nil, ok); assert_eq('exit', how); assert_eq(3, code)\n\
             ok, how, code = os.execute('kill -TERM $$')\n\
             assert_eq(nil, ok); assert_eq('signal', how); assert_eq(15, code)\n\
             assert_eq(true, (os.execute('true')))\n\
             error('keep the log')\n",
        )],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    run.assert_stdout_contains("    keep the log\n");
    assert!(!run.stdout.contains("to-the-log"), "{run}");
    let log = fs::read_to_string(&run.listed_logs()[0]).unwrap();
    assert!(log.contains("to-the-log"), "{log}");
}

fn interrupt_while_b_runs(b_body: &str) {
    let sb = Sandbox::new();
    sb.tree("t", &[("a.lua", ""), ("b.lua", b_body), ("c.lua", "")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_provium"))
        .args(["test", "-p", "1", "t"])
        .current_dir(sb.root())
        .env("PROVIUM_RUNS_DIR", &sb.runs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // a.lua finishes at once; b.lua spins until interrupted.
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "provium ignored SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let run = Run::new(&["test", "-p", "1", "t"], sb.root(), output);
    run.expect_code(1);
    // The running file is reported, interrupted, with a complete log.
    let log = run
        .listed_logs()
        .pop()
        .unwrap_or_else(|| panic!("no log listed\n{run}"));
    assert_eq!(
        redact(&run.stdout),
        format!(
            "provium test\n\n  a.lua ... ok (T)\n  b.lua ... FAIL (T)\n    interrupted by SIGINT\n\n\
             Failed test logs:\n  {:<40} → {}\n\nFAIL: 1 passed, 1 failed, 1 not run\n",
            "b.lua",
            redact(&log.display().to_string())
        ),
        "{run}"
    );
    run.assert_stderr_contains("interrupted by SIGINT");
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("result: FAIL (interrupted)"), "{text}");
    // --rerun-failed picks the interrupted file up.
    let rerun = sb.provium(&["list", "--rerun-failed", "t"]);
    rerun.expect_code(0);
    assert_eq!(rerun.stdout, "b.lua\n", "{rerun}");
}

#[test]
fn concurrent_runs_use_distinct_run_dirs() {
    let sb = Sandbox::new();
    sb.tree("t", &[("a.lua", "error('keep my log')\n")]);
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_provium"))
                .args(["test", "t"])
                .current_dir(sb.root())
                .env("PROVIUM_RUNS_DIR", &sb.runs)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert_eq!(child.wait().unwrap().code(), Some(1));
    }
    let dirs = sb.run_dirs();
    assert_eq!(dirs.len(), 4, "{dirs:?}");
    for dir in dirs {
        assert!(dir.join("a.lua.log").is_file(), "{}", dir.display());
    }
}

/// Runs provium under a pseudo-terminal (util-linux `script`, essential on Debian) so
/// stdout is a TTY.
fn provium_on_tty(sb: &Sandbox, args: &str, no_color: bool) -> Run {
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_provium"));
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .current_dir(sb.root())
        .env("PROVIUM_RUNS_DIR", &sb.runs)
        .env("TERM", "xterm");
    if no_color {
        cmd.env("NO_COLOR", "1");
    } else {
        cmd.env_remove("NO_COLOR");
    }
    let output = cmd.output().expect("util-linux script(1) runs");
    Run::new(&[&command], sb.root(), output)
}

#[test]
fn terminal_gets_colours_and_status_unless_no_color() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[
            ("a.lua", "error('x')\n"),
            ("b.lua", "test('s', function() end)\n"),
        ],
    );
    let run = provium_on_tty(&sb, "test -p 1 t", false);
    run.expect_code(1);
    run.assert_stdout_contains("\x1b[31mFAIL\x1b[0m");
    run.assert_stdout_contains("\x1b[32mok\x1b[0m");
    run.assert_stdout_contains("done, 1 running");
    // The status line is erased before each block.
    run.assert_stdout_contains("\r\x1b[2K  b.lua ... ");

    let plain = provium_on_tty(&sb, "test -p 1 t", true);
    plain.expect_code(1);
    assert!(
        !plain.stdout.contains('\x1b'),
        "escape codes with NO_COLOR\n{plain}"
    );
    plain.assert_stdout_contains("  b.lua ... ok (1 test, ");
}

#[test]
fn a_broken_provium_toml_stops_the_run_naming_profile_key_and_path() {
    let sb = Sandbox::new();
    sb.tree("t", &[("a.lua", "")]);
    sb.write(
        "provium.toml",
        "[profile.minimal]\nkernel = \"missing/bzImage\"\n",
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    run.assert_stderr_contains("profile 'minimal'");
    run.assert_stderr_contains("kernel");
    run.assert_stderr_contains("missing/bzImage");
    assert_eq!(run.stdout, "", "{run}");

    sb.write(
        "provium.toml",
        "[profile.minimal]\nkernel = \"a\"\nkernal = \"b\"\n",
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    run.assert_stderr_contains("kernal");
}
