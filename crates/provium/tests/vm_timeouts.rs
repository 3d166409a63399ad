//! Real-VM CLI tests of timeouts: a file blocked in a guest command, a sub-test whose
//! guest command is cancelled (the VM stays usable), and a file waiting on the pool
//! each end within their limit plus a grace of 2 s, with the right outcome, while a
//! passing file in the same run passes — and no QEMU survives.

mod common;

use std::fs;
use std::path::Path;
use std::time::Instant;

use common::qemus_under;
use common::Sandbox;

/// `(outcome, duration_ms)` of each file's final attempt, from `--json`.
fn outcomes(path: &Path) -> Vec<(String, String, u64)> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "file_finished" && e["final"] == true)
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
                e["duration_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn blocked_guest_calls_and_pool_waits_end_at_their_timeouts() {
    let sb = Sandbox::new();
    let marker = sb.root().join("holder-booted");
    sb.tree(
        "t",
        &[
            // Holds 384M of the 512M pool for 8 s once booted.
            (
                "a_holder.lua",
                &format!(
                    "local vm = provium.create()\n\
                     vm:boot({{ memory = '384M' }})\n\
                     io.open({m:?}, 'w'):close()\n\
                     os.execute('sleep 8')\n\
                     vm:shutdown()\n",
                    m = marker.display().to_string()
                ),
            ),
            // Waits for the pool behind the holder; its own limit ends the wait.
            (
                "b_pool_wait.lua",
                &format!(
                    "while not io.open({m:?}) do os.execute('sleep 0.1') end\n\
                     provium.timeout(3)\n\
                     local vm = provium.create()\n\
                     vm:boot({{ memory = '384M' }})\n",
                    m = marker.display().to_string()
                ),
            ),
            // Blocked in a guest command: the file's limit ends it.
            (
                "c_blocked.lua",
                "local t0 = os.time()\n\
                 local vm = provium.create()\n\
                 vm:boot({ memory = '128M' })\n\
                 provium.timeout(os.time() - t0 + 3)\n\
                 test('sleeps', function() vm:exec('sleep 1000') end)\n",
            ),
            // A sub-test's limit cancels its guest command; the VM goes on.
            (
                "d_cancelled.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '128M' })\n\
                 test('cut_short', { timeout = 2 }, function() vm:exec('sleep 1000') end)\n\
                 test('vm_still_works', function()\n\
                   local ps = vm:exec('ps -o args').stdout.value\n\
                   assert(not ps:find('sleep 1000', 1, true), ps)\n\
                   assert(vm:exec('echo alive').stdout.value == 'alive\\n')\n\
                 end)\n",
            ),
        ],
    );
    let started = Instant::now();
    let run = sb.provium(&["test", "-p", "4", "--mem", "512M", "--json", "e.json", "t"]);
    let took = started.elapsed();
    run.expect_code(1);
    eprintln!("{run}\ntook {took:?}");
    let outcomes = outcomes(&sb.root().join("e.json"));
    let find = |name: &str| {
        outcomes
            .iter()
            .find(|(f, ..)| f == name)
            .unwrap_or_else(|| panic!("no result for {name}\n{run}"))
            .clone()
    };
    assert_eq!(find("a_holder.lua").1, "passed", "{run}");
    let (_, pool, pool_ms) = find("b_pool_wait.lua");
    assert_eq!(pool, "timed-out", "{run}");
    run.assert_stdout_contains("    timed out after 3s\n");
    // Its limit counts from the file's start; it waited for the marker first.
    assert!(
        pool_ms < 3_000 + 2_000 + 8_000,
        "pool wait took {pool_ms} ms\n{run}"
    );
    let (_, cut, _) = find("d_cancelled.lua");
    assert_eq!(cut, "timed-out", "{run}");
    run.assert_stdout_contains("    · cut_short ... FAIL: timed out after 2s\n");
    run.assert_stdout_contains("    · vm_still_works ... ok\n");
    assert!(qemus_under(&sb.runs).is_empty(), "QEMU outlived the run");
    // c_blocked.lua's limit is its boot time plus 3 s; it ends within 2 s of it.
    let (_, blocked, blocked_ms) = find("c_blocked.lua");
    assert_eq!(blocked, "timed-out", "{run}");
    let limit: u64 = run
        .stdout
        .split("    timed out after ")
        .filter_map(|rest| rest.strip_suffix_once("s (in sub-test 'sleeps')"))
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no file-level timeout line for c_blocked.lua\n{run}"));
    assert!(
        blocked_ms <= (limit + 2) * 1000,
        "{blocked_ms} ms for a {limit} s limit\n{run}"
    );
    run.assert_stdout_contains("    · sleeps ... FAIL: timed out after");
}

trait StripOnce {
    fn strip_suffix_once(&self, suffix: &str) -> Option<&str>;
}

impl StripOnce for str {
    /// The text before the first `suffix`, when the text up to it is a number.
    fn strip_suffix_once(&self, suffix: &str) -> Option<&str> {
        let (head, _) = self.split_once(suffix)?;
        head.chars().all(|c| c.is_ascii_digit()).then_some(head)
    }
}
