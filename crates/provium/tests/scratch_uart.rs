use provium::vm::{default_profile, BootProfile, Vm, VmConfig};
use std::time::{Duration, Instant};

#[test]
fn probe() {
    let resolved = default_profile::resolve(&default_profile::cache_dir()).unwrap();
    let mut profile = BootProfile::from_default(&resolved);
    profile.append = std::env::var("APPEND").unwrap_or_default();
    let dir = tempfile::Builder::new()
        .prefix("pvs")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = dir.keep();
    let mut config = VmConfig::new("uart", profile, &dir);
    config.op_timeout = Duration::from_secs(400);
    let vm = Vm::boot(config, None).unwrap();
    eprintln!("channel {:?} dir {}", vm.channel(), dir.display());
    for size in [1usize << 20, 8 << 20, 8 << 20] {
        let data: Vec<u8> = (0..size)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        let t = Instant::now();
        let r = vm.write_file("/tmp/x", &data);
        eprintln!(
            "write {size}: {:?} {:?}",
            t.elapsed(),
            r.as_ref().err().map(|e| e.to_string())
        );
        if r.is_err() {
            eprintln!("{}", vm.console_tail(20));
            break;
        }
        let t = Instant::now();
        let r = vm.read_file("/tmp/x");
        eprintln!(
            "read {size}: {:?} ok={:?}",
            t.elapsed(),
            r.as_ref().map(|d| d == &data).map_err(|e| e.to_string())
        );
        if r.is_err() {
            eprintln!("{}", vm.console_tail(20));
            break;
        }
    }
}
