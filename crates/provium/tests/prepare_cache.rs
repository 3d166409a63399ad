//! Files boot in parallel, so on a cold cache several of them prepare the same profile
//! at once: its base initramfs and its modules disk must come out whole for each, not
//! half-written by one builder while another reads or renames it. (A fresh machine
//! failed here: two examples building one modules disk, `mke2fs` reporting a corrupt
//! directory block and the other file's rename finding nothing.)

use provium::vm::{self, default_profile, BootProfile};

#[test]
fn parallel_prepares_on_a_cold_cache_all_succeed() {
    let cache = tempfile::tempdir().unwrap();
    // This test binary holds this one test: no other thread reads the environment
    // while it changes.
    std::env::set_var("PROVIUM_CACHE_DIR", cache.path());
    let default = default_profile::resolve(&default_profile::cache_dir()).unwrap();
    let profile = BootProfile::from_default(&default);
    let preparing: Vec<_> = (0..4)
        .map(|_| {
            let profile = profile.clone();
            std::thread::spawn(move || vm::prepare(&profile).map_err(|e| e.to_string()))
        })
        .collect();
    let mut disks = Vec::new();
    for thread in preparing {
        let prepared = thread.join().unwrap().unwrap();
        assert!(prepared.base_initrd.is_file(), "{prepared:?}");
        if let Some(disk) = prepared.modules_disk {
            assert!(disk.starts_with(cache.path()), "{disk:?}");
            disks.push(disk);
        }
    }
    // The host's modules exist wherever this suite runs (install-deps), so each file
    // got the same disk, and a second look finds it whole.
    assert_eq!(disks.len(), 4);
    assert!(disks.windows(2).all(|w| w[0] == w[1]), "{disks:?}");
    let again = vm::prepare(&profile).unwrap();
    assert_eq!(again.modules_disk.as_ref(), Some(&disks[0]));
    let check = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&disks[0])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
