//! `provium prepare`: everything a profile's first boot would do on the host, without
//! booting — its `build` command, then the kernel's release, its modules (staged and
//! put on their disk) and the base initramfs, all cached for the runs that follow.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::Config;
use crate::runs::{self, RunDir, RunsError};
use crate::vm::host::{HostCache, Notify, ProfileError, DEFAULT_PROFILE};
use crate::vm::{self, BootError, Prepared};

#[derive(Debug, Error)]
pub enum PrepareError {
    #[error(transparent)]
    Runs(#[from] RunsError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Boot(#[from] Box<BootError>),
}

/// One profile, prepared.
#[derive(Debug)]
pub struct PreparedProfile {
    pub name: String,
    pub kernel: PathBuf,
    /// Whether its `build` ran.
    pub built: bool,
    pub prepared: Prepared,
    pub took: Duration,
}

/// The profiles `provium prepare` works on: `only`, else every profile of the
/// configuration, else (a project without profiles) the built-in `default`.
pub fn profiles_to_prepare(config: &Config, only: Option<&str>) -> Vec<String> {
    match only {
        Some(name) => vec![name.to_string()],
        None if config.profiles.is_empty() => vec![DEFAULT_PROFILE.to_string()],
        None => config.profiles.keys().cloned().collect(),
    }
}

/// Prepares `names` in order, reporting each to `done` as it is ready; stops at the
/// first that fails. A build's log goes to a run directory under `runs_parent`, kept
/// when the build fails (its path is in the error) and removed otherwise.
pub fn prepare(
    config: &Config,
    names: &[String],
    runs_parent: &Path,
    notify: Notify,
    mut done: impl FnMut(&PreparedProfile),
) -> Result<(), PrepareError> {
    runs::sweep(runs_parent, runs::keep_runs());
    let run_dir = RunDir::create(runs_parent)?;
    let host = HostCache::new(notify);
    let result = names.iter().try_for_each(|name| {
        let start = Instant::now();
        let profile = host.boot_profile(config, name, run_dir.path())?;
        let prepared = vm::prepare(&profile).map_err(Box::new)?;
        done(&PreparedProfile {
            name: name.clone(),
            kernel: profile.kernel.clone(),
            built: config.get(name).is_some_and(|p| p.build.is_some()),
            prepared,
            took: start.elapsed(),
        });
        Ok(())
    });
    run_dir.finish();
    result
}
