//! The developer's loop from the command line: editor support (`provium lsp-setup`),
//! gdb, suites run from anywhere.

mod common;

use std::fs;

use common::Sandbox;

#[test]
fn lsp_setup_writes_the_type_definitions_and_the_luarc() {
    let sb = Sandbox::new();
    let run = sb.provium(&["lsp-setup", "proj"]);
    // The directory must exist: nothing is created silently elsewhere.
    run.expect_code(1);
    fs::create_dir(sb.root().join("proj")).unwrap();
    let run = sb.provium(&["lsp-setup", "proj"]);
    run.expect_code(0);
    run.assert_stdout_contains("wrote proj/.provium-types/provium.lua\n");
    run.assert_stdout_contains("wrote proj/.luarc.json\n");
    let meta = fs::read_to_string(sb.root().join("proj/.provium-types/provium.lua")).unwrap();
    assert!(meta.starts_with("---@meta provium"), "{meta}");
    assert!(meta.contains("function VM:exec(cmd, opts) end"));
    let luarc: serde_json::Value =
        serde_json::from_slice(&fs::read(sb.root().join("proj/.luarc.json")).unwrap()).unwrap();
    assert_eq!(luarc["runtime.version"], "Lua 5.4");
    assert_eq!(luarc["workspace.library"][0], ".provium-types");
}

#[test]
fn a_real_gdb_attaches_to_the_guest_kernel_and_the_guest_goes_on() {
    let sb = Sandbox::new();
    sb.tree(
        "t",
        &[(
            "gdb.lua",
            "local vm = provium.create()\n\
             vm:boot({ memory = '256M', gdb = true })\n\
             assert(vm.gdb:match('^localhost:%d+$'), vm.gdb)\n\
             local gdb = io.popen(\"gdb -batch -nx -ex 'target remote \" .. vm.gdb .. \"' \" ..\n\
               \"-ex 'info registers rip' -ex 'detach' 2>&1\")\n\
             local out = gdb:read('a')\n\
             gdb:close()\n\
             assert(out:match('rip%s+0x%x+'), out)\n\
             assert_eq('after\\n', vm:exec('echo after').stdout.value)\n\
             assert_contains(vm:exec('cat /proc/cmdline').stdout, 'nokaslr')\n\
             vm:kill()\n",
        )],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(0);
    run.assert_stderr_contains("provium: VM gdb.lua#1: gdb stub at localhost:");
    run.assert_stderr_contains("; attach with: gdb ");
}

/// `provium test suite/` from the parent directory uses `suite/provium.toml`: its
/// `[run]` settings, and its directory for relative paths.
#[test]
fn a_suite_runs_from_its_parent_directory_with_its_own_config() {
    let sb = Sandbox::new();
    sb.tree(
        "suite",
        &[
            ("provium.toml", "[run]\ntimeout = \"1s\"\n"),
            ("spin.lua", "while true do end\n"),
        ],
    );
    let run = sb.provium(&["test", "suite"]);
    run.expect_code(1);
    run.assert_stdout_contains("spin.lua");
    run.assert_stdout_contains("timed out");
}

#[test]
fn paths_of_two_projects_in_one_run_are_refused() {
    let sb = Sandbox::new();
    sb.tree("a", &[("provium.toml", ""), ("one.lua", "")]);
    sb.tree("b", &[("provium.toml", ""), ("two.lua", "")]);
    let run = sb.provium(&["test", "a", "b/two.lua"]);
    run.expect_code(1);
    run.assert_stderr_contains("a and b/two.lua belong to different projects (");
    run.assert_stderr_contains("a/provium.toml and ");
    run.assert_stderr_contains("b/provium.toml): run each project on its own");
}

#[test]
fn a_suite_from_its_parent_directory_finds_its_files_in_a_real_vm() {
    let sb = Sandbox::new();
    sb.tree(
        "suite",
        &[
            ("provium.toml", ""),
            ("data/marker", "from the suite\n"),
            (
                "files.lua",
                "local vm = provium.create()\n\
                 vm:boot({ memory = '256M', files = { ['/marker'] = 'data/marker' } })\n\
                 assert_eq('from the suite\\n', vm:exec('cat /marker').stdout.value)\n",
            ),
        ],
    );
    let run = sb.provium(&["test", "suite"]);
    run.expect_code(0);
}

/// A host kernel image for profiles in these tests (what the default profile boots).
fn host_kernel() -> String {
    let mut kernels: Vec<_> = fs::read_dir("/boot")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .expect("a kernel in /boot")
        .display()
        .to_string()
}

#[test]
fn prepare_runs_the_build_and_readies_the_profile_without_booting() {
    let sb = Sandbox::new();
    let kernel = host_kernel();
    sb.tree(
        "p",
        &[(
            "provium.toml",
            &format!(
                "[profile.mine]\nkernel = \"out/bzImage\"\n\
                 build = \"mkdir -p out && cp {kernel} out/bzImage && echo compiled\"\n"
            ),
        )],
    );
    let run = sb.provium_in("p", &["prepare"]);
    run.expect_code(0);
    run.assert_stderr_contains("provium: building profile 'mine': mkdir -p out");
    run.assert_stdout_contains("profile 'mine': built and ready in ");
    run.assert_stdout_contains("/p/out/bzImage), ");
    assert!(sb.root().join("p/out/bzImage").is_file());
}

#[test]
fn prepare_stops_at_a_failed_build_with_its_log() {
    let sb = Sandbox::new();
    sb.tree(
        "p",
        &[(
            "provium.toml",
            "[profile.broken]\nkernel = \"out/bzImage\"\n\
             build = \"echo 'cc: error: no such file'; exit 3\"\n",
        )],
    );
    let run = sb.provium_in("p", &["prepare", "broken"]);
    run.expect_code(1);
    run.assert_stderr_contains("error: profile 'broken': build `echo 'cc: error: no such file'; exit 3` failed (exit status: 3) (log: ");
    run.assert_stderr_contains("last lines of the build log:\ncc: error: no such file\n");
    let unknown = sb.provium_in("p", &["prepare", "nope"]);
    unknown.expect_code(1);
    unknown
        .assert_stderr_contains("error: unknown profile 'nope'; known profiles: broken, default");
}

#[test]
fn kernel_release_reads_the_profile_kernel_without_booting() {
    let sb = Sandbox::new();
    let kernel = host_kernel();
    let release = kernel.rsplit_once("vmlinuz-").unwrap().1.to_string();
    sb.tree(
        "t",
        &[
            (
                "provium.toml",
                &format!(
                    "[profile.host]\nkernel = \"{kernel}\"\n\
                     [profile.text]\nkernel = \"notes.txt\"\n"
                ),
            ),
            ("notes.txt", "not a kernel\n"),
            (
                "release.lua",
                &format!(
                    "assert_eq({release:?}, provium.kernel_release('host'))\n\
                     assert_eq({release:?}, provium.kernel_release())\n\
                     test('unknown', function() provium.kernel_release('nope') end)\n\
                     test('not_bzimage', function() provium.kernel_release('text') end)\n"
                ),
            ),
        ],
    );
    let run = sb.provium(&["test", "t"]);
    run.expect_code(1);
    run.assert_stdout_contains("unknown profile 'nope'; known profiles: default, host, text");
    run.assert_stdout_contains("kernel_release: profile 'text': kernel ");
    run.assert_stdout_contains("notes.txt is neither an x86 bzImage nor a vmlinux ELF");
    run.assert_stdout_contains("0 passed, 1 failed");
}

/// `provium kconfig` prints the fragment `scripts/build-kernel` builds with, and it
/// holds what the issue lists: virtio over PCI and MMIO (console, block, net), PVH,
/// devtmpfs, tmpfs, proc and sysfs, the 8250 console, gzip and zstd initramfs.
#[test]
fn kconfig_prints_the_fragment_the_kernel_is_built_with() {
    let sb = Sandbox::new();
    let run = sb.provium(&["kconfig"]);
    run.expect_code(0);
    let fragment = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/vm/kconfig.fragment"
    ))
    .unwrap();
    assert_eq!(run.stdout, fragment);
    for option in [
        "CONFIG_VIRTIO_PCI=y",
        "CONFIG_VIRTIO_MMIO=y",
        "CONFIG_VIRTIO_CONSOLE=y",
        "CONFIG_VIRTIO_BLK=y",
        "CONFIG_VIRTIO_NET=y",
        "CONFIG_PVH=y",
        "CONFIG_DEVTMPFS=y",
        "CONFIG_TMPFS=y",
        "CONFIG_PROC_FS=y",
        "CONFIG_SYSFS=y",
        "CONFIG_SERIAL_8250_CONSOLE=y",
        "CONFIG_RD_GZIP=y",
        "CONFIG_RD_ZSTD=y",
        "CONFIG_EXT4_FS=y",
    ] {
        assert!(
            run.stdout.lines().any(|line| line == option),
            "{option} missing"
        );
    }
}
