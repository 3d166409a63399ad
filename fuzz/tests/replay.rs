//! Replays every corpus file through its target's harness: what CI runs without a
//! fuzzer (`scripts/fuzz --replay`).

use std::path::Path;

use provium_fuzz::TARGETS;

#[test]
fn every_corpus_file_passes_its_harness() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, harness) in TARGETS {
        let dir = corpus.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        for file in files {
            let data = std::fs::read(&file).expect("corpus file");
            eprintln!("{name}: {}", file.display());
            harness(&data);
        }
    }
}
