//! Holding under load: far more VM files than cores, run at once, all pass — the pool
//! lets only as many VMs boot at a time as the host can serve, and boot deadlines
//! measure progress, so oversubscription slows a run down instead of failing it.

mod common;

use common::Sandbox;

const ONE_VM: &str = "local vm = provium.create()\n\
                      vm:boot({ memory = '256M' })\n\
                      assert(vm:exec('true').ok)\n\
                      vm:shutdown()\n";

fn one_vm_files(sb: &Sandbox, tree: &str, count: usize) {
    let names: Vec<String> = (0..count).map(|i| format!("vm{i:02}.lua")).collect();
    let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), ONE_VM)).collect();
    sb.tree(tree, &files);
}

#[test]
fn twenty_four_vms_at_p_24_and_twelve_at_p_8_all_pass() {
    let sb = Sandbox::new();
    one_vm_files(&sb, "many", 24);
    one_vm_files(&sb, "some", 12);
    let many = sb.provium(&["test", "-p", "24", "many"]);
    many.expect_code(0);
    many.assert_stdout_contains("ok: 24 passed");
    let some = sb.provium(&["test", "-p", "8", "some"]);
    some.expect_code(0);
    some.assert_stdout_contains("ok: 12 passed");
}
