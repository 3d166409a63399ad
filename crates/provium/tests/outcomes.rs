//! Real-VM CLI test of outcomes: a kernel panic, a boot failure, a pool refusal and a
//! dead agent end their files as `error` (the infrastructure broke), an assertion as
//! `failed`; the terminal prints every one of them as `FAIL` in the seed's format, and
//! each kept log records which it was.

mod common;

use std::fs;

use common::{Run, Sandbox};

/// The `result:` line of `name`'s kept log.
fn logged_result(run: &Run, name: &str) -> String {
    let log = run
        .listed_logs()
        .into_iter()
        .find(|p| p.ends_with(format!("{name}.log")))
        .unwrap_or_else(|| panic!("no kept log for {name}\n{run}"));
    let text = fs::read_to_string(&log).unwrap();
    text.lines()
        .find(|l| l.starts_with("result: "))
        .unwrap_or_else(|| panic!("no result line in {}\n{text}", log.display()))
        .to_string()
}

#[test]
fn broken_infrastructure_is_an_error_and_a_failed_assertion_a_failure() {
    let sandbox = Sandbox::new();
    sandbox.write("not-a-kernel", "this is no bzImage\n");
    sandbox.write(
        "provium.toml",
        "[profile.broken]\nkernel = \"not-a-kernel\"\ninit = \"none\"\n",
    );
    sandbox.tree(
        "tests",
        &[
            (
                "assertion.lua",
                "test('math', function() assert_eq(1, 2) end)\n",
            ),
            (
                "boot_failure.lua",
                "local vm = provium.create('broken')\nvm:boot()\n",
            ),
            (
                "pool_refusal.lua",
                "local vm = provium.create()\nvm:boot({ memory = '4096G' })\n",
            ),
            (
                "panic.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '256M' })\n\
                 test('sysrq_crash', function()\n\
                   vm:exec('echo c > /proc/sysrq-trigger')\n\
                 end)\n",
            ),
            (
                "dead_agent.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '256M' })\n\
                 test('agent_exits', function()\n\
                   vm:syscall(231, 0)\n\
                 end)\n",
            ),
        ],
    );
    let run = sandbox.provium(&["test", "-p", "2", "tests"]);
    run.expect_code(1);
    run.assert_stdout_contains("FAIL: 0 passed, 5 failed");
    for name in [
        "assertion.lua",
        "boot_failure.lua",
        "pool_refusal.lua",
        "panic.lua",
        "dead_agent.lua",
    ] {
        assert!(
            run.stdout.contains(&format!("  {name} ... FAIL (")),
            "{name} is not printed as FAIL\n{run}"
        );
    }
    assert!(
        run.stdout.contains("· math ... FAIL: expected 1, got 2"),
        "{run}"
    );
    assert!(
        run.stdout.contains(
            "· sysrq_crash ... FAIL: VM panic.lua#1 broke during exec: the kernel panicked"
        ),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("· agent_exits ... FAIL: VM dead_agent.lua#1 broke during syscall: "),
        "{run}"
    );
    assert!(logged_result(&run, "assertion.lua").starts_with("result: FAIL (failed)"));
    for name in [
        "boot_failure.lua",
        "pool_refusal.lua",
        "panic.lua",
        "dead_agent.lua",
    ] {
        let result = logged_result(&run, name);
        assert!(
            result.starts_with("result: FAIL (error)"),
            "{name}: {result}\n{run}"
        );
    }
}
