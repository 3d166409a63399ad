//! Shared parts of the VM benchmarks: the accelerator and profile they use, booting,
//! timing, medians and the report lines.
//!
//! Every figure is a median over `BENCH_RUNS` runs (default and minimum 5) and is
//! printed beside a baseline measured in the same process, interleaved with it, so
//! that load from other processes on the shared machine affects both alike.

// Each bench target compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod raw;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use provium::vm::accel::{self, Accel};
use provium::vm::default_profile::{self, DefaultProfile};
use provium::vm::{AgentChannel, BootProfile, Vm, VmConfig};

/// Any single agent operation of a benchmark that takes longer is stuck: the slowest
/// measured here, 8 MiB written over the ttyS1 fallback under load, took about 200 s.
pub const OP_TIMEOUT: Duration = Duration::from_secs(360);

/// Fewer runs than this make a median meaningless on a noisy machine.
pub const MIN_RUNS: usize = 5;

/// What every benchmark of one process shares.
pub struct Bench {
    pub resolved: DefaultProfile,
    pub qemu: PathBuf,
    pub accel: Accel,
    pub runs: usize,
    /// Run directories live here; short, so socket paths stay under 108 bytes.
    pub work: tempfile::TempDir,
}

impl Bench {
    /// Resolves the default profile and the accelerator, and prints the header line.
    pub fn new(title: &str) -> Result<Bench> {
        let resolved = default_profile::resolve(&default_profile::cache_dir())
            .context("resolving the default profile")?;
        let qemu = accel::qemu_binary()?;
        let forced = std::env::var("PROVIUM_ACCEL").ok();
        let decision = accel::decide(forced.as_deref(), &qemu, accel::PROBE_DEADLINE)?;
        let runs = match std::env::var("BENCH_RUNS") {
            Ok(v) => v
                .parse::<usize>()
                .with_context(|| format!("BENCH_RUNS='{v}' is not a number"))?,
            Err(_) => MIN_RUNS,
        };
        if runs < MIN_RUNS {
            bail!("BENCH_RUNS={runs}: at least {MIN_RUNS} runs are needed for a median");
        }
        let work = tempfile::Builder::new()
            .prefix("pvb")
            .tempdir_in("/tmp")
            .context("creating the work directory in /tmp")?;
        let why = match &decision.kvm_unusable {
            Some(reason) => format!(" (KVM unusable: {reason})"),
            None if forced.is_some() => " (PROVIUM_ACCEL)".to_string(),
            None => String::new(),
        };
        println!(
            "{title}: accelerator {}{why}; kernel {}; {runs} runs; {} host CPUs; 512 MiB, 1 vCPU",
            decision.accel.name(),
            resolved.kernel_release,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        Ok(Bench {
            resolved,
            qemu,
            accel: decision.accel,
            runs,
            work,
        })
    }

    /// The default profile with `append` on the kernel command line.
    pub fn profile(&self, append: &str) -> BootProfile {
        let mut profile = BootProfile::from_default(&self.resolved);
        profile.append = append.to_string();
        profile
    }

    /// Boots a VM in a fresh run directory (so its combined initrd is built cold) and
    /// checks it answered on the expected channel.
    pub fn boot(&self, name: &str, profile: BootProfile, expect: AgentChannel) -> Result<Vm> {
        let run_dir = self.work.path().join(name);
        std::fs::create_dir(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let mut config = VmConfig::new(name, profile, &run_dir);
        config.qemu = self.qemu.clone();
        config.use_kvm = self.accel == Accel::Kvm;
        config.op_timeout = OP_TIMEOUT;
        let vm = Vm::boot(config, None)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", e.console_tail().unwrap_or_default()))?;
        if vm.channel() != expect {
            bail!(
                "VM {name} answered on {:?}, expected {expect:?}",
                vm.channel()
            );
        }
        Ok(vm)
    }
}

/// Runs `op` and returns how long it took with its result.
pub fn timed<T>(op: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let start = Instant::now();
    let value = op()?;
    Ok((start.elapsed(), value))
}

/// The median; the mean of the two middle samples for an even count.
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2
    }
}

/// A duration for a report line, in the unit that keeps it readable.
pub fn show(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 1.0 {
        format!("{secs:.3} s")
    } else {
        format!("{:.2} ms", secs * 1000.0)
    }
}

/// One report line: the median and every sample, then `extra` (a ratio, a rate).
pub fn report(label: &str, samples: &[Duration], extra: &str) {
    let all: Vec<String> = samples.iter().map(|d| show(*d)).collect();
    println!(
        "  {label:<44} median {:>10}  {extra}\n  {:<44} (runs: {})",
        show(median(samples)),
        "",
        all.join(", ")
    );
}

/// `measured / baseline` of the medians, with the target when there is one.
pub fn ratio(measured: &[Duration], baseline: &[Duration], target: Option<f64>) -> String {
    let r = ratio_of(measured, baseline);
    match target {
        Some(t) if r <= t => format!("ratio {r:.2} (target <= {t}: met)"),
        Some(t) => format!(
            "ratio {r:.2} (target <= {t}: MISSED by {:.0}%)",
            (r / t - 1.0) * 100.0
        ),
        None => format!("ratio {r:.2}"),
    }
}

/// `measured / baseline` of the medians.
pub fn ratio_of(measured: &[Duration], baseline: &[Duration]) -> f64 {
    median(measured).as_secs_f64() / median(baseline).as_secs_f64()
}

/// Runs `op` `count` times and returns the mean time of one call: round trips of a
/// few milliseconds are timed in batches, so one scheduler hiccup does not decide a
/// run, while the median over runs still discards a disturbed batch.
pub fn batch_mean(count: u32, mut op: impl FnMut() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..count {
        op()?;
    }
    Ok(start.elapsed() / count)
}
