//! The developer's loop from the command line: editor support (`provium lsp-setup`).

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
