//! Builds the guest agent as a static x86_64 binary for `vm::agent_bin` to embed.
//!
//! A nested cargo builds `provium-agent` with `+crt-static` on the installed gnu
//! target (no extra target to download), into its own target directory under
//! OUT_DIR so it never waits on the outer build's lock.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let crates = manifest_dir.parent().expect("crates directory");
    let agent_dir = crates.join("provium-agent");
    let proto_dir = crates.join("provium-proto");
    for watched in [
        agent_dir.join("src"),
        agent_dir.join("Cargo.toml"),
        proto_dir.join("src"),
        proto_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let target_dir = out_dir.join("agent-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(agent_dir.join("Cargo.toml"))
        .arg("-p")
        .arg("provium-agent")
        .arg("--target")
        .arg(AGENT_TARGET)
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags of the outer build (or a clippy wrapper) must not leak into the agent.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        // A small agent: it is copied into every initramfs.
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    let output = cmd.output().expect("failed to run cargo for provium-agent");
    if !output.status.success() {
        panic!(
            "building provium-agent failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir
        .join(AGENT_TARGET)
        .join("release")
        .join("provium-agent");
    copy(&built, &out_dir.join("provium-agent"));
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
