//! The fuzz binary cargo-afl runs: `provium-fuzz TARGET` feeds AFL's inputs to one
//! harness of the library (see `provium_fuzz::TARGETS`).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(&(_, harness)) = provium_fuzz::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = provium_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: provium-fuzz TARGET   (one of: {})",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| harness(data));
}
