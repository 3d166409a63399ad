//! Command-line interface: argument parsing, the `test` and `version` commands, and
//! the process exit codes (all of them defined here, in [`Exit`]). Runs themselves
//! belong to the engine; this module turns flags into its inputs and its events into
//! the terminal report.

use std::io;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::discover;
use crate::engine::{self, dispatch, DispatchOptions, Filters, RunPlan, Selection};
use crate::pool::{parse_size_mib, PoolMode};
use crate::report::{Reporter, Style};
use crate::runs;

/// How the process ends. Several outcomes share a code (SPEC §1 has only 0 and 1),
/// but they stay distinct up to here so "the run broke" is never mistaken for
/// "a test failed" in the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every file passed; or help, version, or nothing to rerun.
    Success,
    /// At least one test file failed (or `--fail-fast` left files unrun).
    TestsFailed,
    /// SIGINT/SIGTERM stopped the run.
    Interrupted,
    /// Bad arguments, a missing path, or any other error before or around the run.
    Error,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::TestsFailed | Exit::Interrupted | Exit::Error => 1,
        }
    }
}

const TEST_EXAMPLES: &str = "\
Examples:
  provium test tests/                    run every test file under tests/
  provium test tests/kacs_boot.lua       run one file
  provium test -f token -f session tests/
  provium test -p 1 --fail-fast tests/
  provium test --rerun-failed tests/     rerun what failed last time in tests/
  provium test --mem 4G --cpus 8 tests/  fixed VM resource budget

Exit status: 0 when every file passed, 1 when any failed or on any error.
Failed files' logs are kept under $PROVIUM_RUNS_DIR (default /tmp/provium-runs).";

/// A VM test harness for Linux kernel and system code.
#[derive(Debug, Parser)]
#[command(name = "provium", version, about, propagate_version = false)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Discover and run Lua test files.
    #[command(after_help = TEST_EXAMPLES)]
    Test(TestArgs),
    /// Print the version number.
    Version,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Run N test files in parallel [default: half the CPUs, minimum 2; unlimited with
    /// --mem/--cpus, where the VM pool gates instead]. -p 1 is strictly sequential.
    #[arg(short = 'p', value_name = "N", value_parser = parse_count)]
    jobs: Option<u32>,

    /// Only run files whose path relative to <PATH> contains PATTERN. Repeatable: a
    /// file runs if it matches any.
    #[arg(short = 'f', value_name = "PATTERN")]
    filters: Vec<String>,

    /// Stop launching files after the first failure; running files finish.
    #[arg(long)]
    fail_fast: bool,

    /// Run only the files that failed in the most recent run of this same <PATH>.
    #[arg(long)]
    rerun_failed: bool,

    /// Total memory budget for VMs (512M, 4G; a bare number is MiB). Enables fixed
    /// resource pooling.
    #[arg(long, value_name = "SIZE", value_parser = parse_mem)]
    mem: Option<u64>,

    /// Total vCPU budget for VMs. Enables fixed resource pooling.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    cpus: Option<u32>,

    /// A directory of .lua test files (searched recursively, skipping fixtures/
    /// directories) or a single .lua file.
    #[arg(value_name = "PATH")]
    path: PathBuf,
}

fn parse_count(input: &str) -> Result<u32, String> {
    match input.parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a positive whole number".to_string()),
    }
}

fn parse_mem(input: &str) -> Result<u64, String> {
    parse_size_mib(input).map_err(|e| e.to_string())
}

impl TestArgs {
    fn pool_mode(&self) -> PoolMode {
        if self.mem.is_none() && self.cpus.is_none() {
            PoolMode::Auto
        } else {
            PoolMode::Fixed {
                memory_mib: self.mem,
                cpus: self.cpus,
            }
        }
    }

    fn dispatch_options(&self) -> DispatchOptions {
        let jobs = match (self.jobs, self.pool_mode()) {
            (Some(n), _) => Some(n as usize),
            (None, PoolMode::Fixed { .. }) => None,
            (None, PoolMode::Auto) => Some(dispatch::default_jobs()),
        };
        DispatchOptions {
            jobs,
            fail_fast: self.fail_fast,
        }
    }
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    run(std::env::args_os()).code()
}

/// Parses `args` (including the program name) and runs the command.
pub fn run<I, T>(args: I) -> Exit
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    let result = match cli.command {
        Command::Version => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            Ok(Exit::Success)
        }
        Command::Test(args) => test(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        Exit::Error
    })
}

/// Help and version go to stdout with success; any other parse error becomes one
/// line on stderr (clap's own multi-line usage block is left to `--help`).
fn clap_exit(error: clap::Error) -> Exit {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            Exit::Success
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            eprintln!("error: no command given: use 'provium test <PATH>' or 'provium version' (see 'provium --help')");
            Exit::Error
        }
        _ => {
            let rendered = error.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.starts_with("Usage:"))
                .map(str::trim)
                .filter(|line| {
                    !line.is_empty()
                        && !line.starts_with("tip:")
                        && !line.starts_with("For more information")
                })
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("error: {message} (see 'provium --help')");
            Exit::Error
        }
    }
}

fn test(args: TestArgs) -> anyhow::Result<Exit> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let config = config::load(&cwd)?;
    let found = discover::discover(&args.path)?;
    let runs_parent = runs::runs_parent();
    let filters = Filters {
        patterns: args.filters.clone(),
        rerun_failed: args.rerun_failed,
    };
    let root_key = found.root_key.clone();
    let test_root = found.root_dir.clone();
    let files = match engine::select(found, &args.path, &filters, &runs_parent)? {
        Selection::Files(files) => files,
        Selection::NothingToRerun(why) => {
            println!("{why}");
            return Ok(Exit::Success);
        }
    };
    let plan = RunPlan {
        files,
        root_key,
        test_root,
        config,
        runs_parent,
        pool: args.pool_mode(),
        dispatch: args.dispatch_options(),
    };

    let mut reporter = Reporter::new(io::stdout(), Style::detect());
    let mut output_error = None;
    let summary = engine::run(plan, |event| {
        if let Err(e) = reporter.handle(&event) {
            output_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = output_error {
        // A closed stdout (e.g. `| head`) must not turn a failing run into a pass.
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write the report to stdout");
        }
    }

    Ok(if summary.interrupted_by.is_some() {
        Exit::Interrupted
    } else if summary.succeeded() {
        Exit::Success
    } else {
        Exit::TestsFailed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> TestArgs {
        let cli = Cli::try_parse_from(args).unwrap();
        match cli.command {
            Command::Test(args) => args,
            Command::Version => panic!("expected test"),
        }
    }

    #[test]
    fn pool_mode_follows_mem_and_cpus() {
        assert_eq!(parse(&["provium", "test", "t"]).pool_mode(), PoolMode::Auto);
        assert_eq!(
            parse(&["provium", "test", "--mem", "4G", "--cpus", "8", "t"]).pool_mode(),
            PoolMode::Fixed {
                memory_mib: Some(4096),
                cpus: Some(8)
            }
        );
        assert_eq!(
            parse(&["provium", "test", "--cpus", "2", "t"]).pool_mode(),
            PoolMode::Fixed {
                memory_mib: None,
                cpus: Some(2)
            }
        );
    }

    #[test]
    fn jobs_default_and_fixed_pool_unlimited() {
        let auto = parse(&["provium", "test", "t"]).dispatch_options();
        assert!(auto.jobs.unwrap() >= 2);
        let fixed = parse(&["provium", "test", "--mem", "1G", "t"]).dispatch_options();
        assert_eq!(fixed.jobs, None);
        let explicit = parse(&["provium", "test", "--mem", "1G", "-p", "3", "t"]);
        assert_eq!(explicit.dispatch_options().jobs, Some(3));
    }

    #[test]
    fn filters_repeat() {
        let args = parse(&["provium", "test", "-f", "a", "-f", "b", "--fail-fast", "t"]);
        assert_eq!(args.filters, ["a", "b"]);
        assert!(args.fail_fast);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(run(["provium", "test", "-p", "0", "t"]), Exit::Error);
        assert_eq!(run(["provium", "test", "--mem", "lots", "t"]), Exit::Error);
        assert_eq!(run(["provium", "test"]), Exit::Error);
        assert_eq!(run(["provium", "bogus"]), Exit::Error);
        assert_eq!(Exit::Error.code(), 1);
        assert_eq!(Exit::TestsFailed.code(), 1);
        assert_eq!(Exit::Success.code(), 0);
    }
}
