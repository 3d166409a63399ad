//! The committed seed corpus is what `provium_fuzz::seeds` generates; run with
//! `PROVIUM_FUZZ_WRITE_SEEDS=1` to write it after changing the generator.

use std::path::Path;

use provium_fuzz::{seeds::seeds, TARGETS};

#[test]
fn committed_seeds_match_the_generator() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = std::env::var_os("PROVIUM_FUZZ_WRITE_SEEDS").is_some();
    let seeds = seeds();
    for (target, _) in TARGETS {
        assert!(
            seeds.iter().any(|s| s.target == *target),
            "no seeds for {target}"
        );
    }
    for seed in seeds {
        let path = corpus.join(seed.target).join(&seed.name);
        if write {
            std::fs::create_dir_all(path.parent().expect("target dir")).expect("mkdir");
            std::fs::write(&path, &seed.bytes).expect("write seed");
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (PROVIUM_FUZZ_WRITE_SEEDS=1 writes it)",
                    path.display()
                )
            });
            assert_eq!(
                committed,
                seed.bytes,
                "{} differs from the generator",
                path.display()
            );
        }
    }
}
