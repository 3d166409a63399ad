//! Command-line interface: argument parsing, the commands (`test`, `list`, `shell`,
//! `prepare`, `kconfig`, `lsp-setup`, `version`), and the process exit codes (all of them defined
//! here, in [`Exit`]). Runs themselves belong to the engine; this module turns flags
//! into its inputs and its events into the terminal report.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::discover::{self, TestFile};
use crate::duration;
use crate::engine::{self, dispatch, DispatchOptions, Filters, Partition, RunPlan, Selection};
use crate::pool::{parse_size_mib, PoolMode};
use crate::report::{PartitionInfo, ReportFiles, Reporter, Style};
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
    /// `provium shell`: the shell's own exit status.
    Status(i32),
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::TestsFailed | Exit::Interrupted | Exit::Error => 1,
            Exit::Status(status) => status,
        }
    }
}

const TEST_EXAMPLES: &str = "\
Examples:
  provium test tests/                    run every test file under tests/
  provium test tests/kacs_boot.lua       run one file
  provium test a.lua b.lua more/         several paths (shell globs work)
  provium test -f token -f session tests/
  provium test -p 1 --fail-fast tests/
  provium test --rerun-failed tests/     rerun what failed last time in tests/
  provium test --mem 4G --cpus 8 tests/  fixed VM resource budget
  provium test --timeout 10m --retries 2 --junit junit.xml --partition hash:1/4 tests/

Exit status: 0 when every file passed, 1 when any failed or on any error.
Failed files' logs are kept under $PROVIUM_RUNS_DIR (default /tmp/provium-runs).";

const LIST_EXAMPLES: &str = "\
Examples:
  provium list tests/                       every test file under tests/
  provium list --partition count:2/4 tests/ the files of CI shard 2 of 4
  provium list --rerun-failed --json tests/ what --rerun-failed would run, as JSON lines";

const SHELL_EXAMPLES: &str = "\
Examples:
  provium shell                              a shell in a VM of the default profile
  provium shell mine --mem 2G --cpus 2       a VM of [profile.mine]
  provium shell --fixture kacs               resume fixtures/kacs.lua's snapshot
  provium shell --file /root/m.ko=out/m.ko   inject a file
  provium shell -c 'uname -r'                run one command, exit with its status
  echo 'dmesg | tail' | provium shell        run a script from stdin

The VM powers off when the shell exits; Ctrl-C goes to the guest's foreground job.";

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
    /// Print the files `provium test` with the same selection would run; boots nothing.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Print the kernel config fragment a kernel needs to run under Provium with
    /// everything built in (merge it onto `make tinyconfig` or your own config).
    Kconfig,
    /// Boot a VM (or resume a fixture) and attach a shell in it; exits with the
    /// shell's status.
    #[command(after_help = SHELL_EXAMPLES)]
    Shell(ShellArgs),
    /// Run profiles' build commands and prepare everything their boots need on the
    /// host (modules, initramfs), without booting: every profile of provium.toml, or
    /// PROFILE.
    Prepare {
        /// The profile to prepare [default: every profile of provium.toml, else
        /// `default`].
        #[arg(value_name = "PROFILE")]
        profile: Option<String>,
    },
    /// Write editor support for test files: type definitions of the Lua API for
    /// lua-language-server, and a .luarc.json pointing at them.
    LspSetup {
        /// The project directory [default: the current directory].
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the version number.
    Version,
}

/// Which files: shared by `test` and `list`.
#[derive(Debug, Args)]
struct SelectArgs {
    /// Only run files whose path relative to its <PATH> contains PATTERN. Repeatable:
    /// a file runs if it matches any.
    #[arg(short = 'f', value_name = "PATTERN")]
    filters: Vec<String>,

    /// Run one shard of the selected files: count:K/N deals the sorted list
    /// round-robin, hash:K/N keeps a file by a stable hash of its relative path (adding
    /// a file moves no other). K is 1-based; applied after -f.
    #[arg(long, value_name = "MODE:K/N", value_parser = parse_partition)]
    partition: Option<Partition>,

    /// Run only the files that failed when they last ran under the same <PATH> (and
    /// the same --partition shard).
    #[arg(long)]
    rerun_failed: bool,

    /// Directories of .lua test files (searched recursively, skipping fixtures/
    /// directories) or single .lua files; names are relative to each.
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct TestArgs {
    #[command(flatten)]
    select: SelectArgs,

    /// Run N test files in parallel [default: half the CPUs, minimum 2; unlimited with
    /// --mem/--cpus, where the VM pool gates instead]. -p 1 is strictly sequential.
    #[arg(short = 'p', value_name = "N", value_parser = parse_count)]
    jobs: Option<u32>,

    /// Stop launching files after the first failure; running files finish.
    #[arg(long)]
    fail_fast: bool,

    /// Total memory budget for VMs (512M, 4G; a bare number is MiB). Enables fixed
    /// resource pooling.
    #[arg(long, value_name = "SIZE", value_parser = parse_mem)]
    mem: Option<u64>,

    /// Total vCPU budget for VMs. Enables fixed resource pooling.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    cpus: Option<u32>,

    /// Each file's time limit: seconds (90) or with a unit (500ms, 30s, 10m, 2h); 0
    /// for none [default: `timeout` in provium.toml's [run], else 300s].
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    timeout: Option<Duration>,

    /// Run a file that does not pass again, up to N more times, in a fresh state; one
    /// that passes later is reported ok and flaky.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,

    /// Also write a JUnit XML report to FILE (as Jenkins, GitLab and GitHub read it).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,

    /// Also write the run's events as JSON lines to FILE; `-` for stdout, which then
    /// carries only JSON (the human report goes to stderr).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also write a KTAP (version 1) report to FILE, as kselftest and KUnit print it.
    #[arg(long, value_name = "FILE")]
    ktap: Option<PathBuf>,

    /// When a sub-test or a file fails, open an interactive shell in the file's last
    /// booted VM before anything is torn down; the file goes on when it exits. Needs a
    /// terminal and -p 1.
    #[arg(long)]
    shell_on_failure: bool,
}

#[derive(Debug, Args)]
struct ShellArgs {
    /// The profile to boot [default: default].
    #[arg(value_name = "PROFILE")]
    profile: Option<String>,

    /// Resume the fixture fixtures/NAME.lua (found from the current directory)
    /// instead of booting.
    #[arg(long, value_name = "NAME", conflicts_with = "profile")]
    fixture: Option<String>,

    /// The VM's memory (512M, 2G; a bare number is MiB) [default: 512M].
    #[arg(long, value_name = "SIZE", conflicts_with = "fixture")]
    mem: Option<String>,

    /// The VM's vCPUs [default: 1].
    #[arg(long, value_name = "N", value_parser = parse_count, conflicts_with = "fixture")]
    cpus: Option<u32>,

    /// Inject a host file into the guest before it boots. Repeatable.
    #[arg(long = "file", value_name = "GUEST=HOST", value_parser = parse_injection, conflicts_with = "fixture")]
    files: Vec<(String, String)>,

    /// Start QEMU's gdb stub (the guest boots with nokaslr) and print how to attach.
    #[arg(long, conflicts_with = "fixture")]
    gdb: bool,

    /// Run CMD without a pty and exit with its status (without -c, a stdin that is no
    /// terminal is run as a script the same way).
    #[arg(short = 'c', value_name = "CMD")]
    command: Option<String>,
}

fn parse_injection(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((guest, host)) if !guest.is_empty() && !host.is_empty() => {
            Ok((guest.to_string(), host.to_string()))
        }
        _ => Err(format!(
            "'{input}' is not GUEST=HOST (a guest path, '=', a host path)"
        )),
    }
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    select: SelectArgs,

    /// Print one JSON object per file instead of its relative path.
    #[arg(long)]
    json: bool,
}

/// A file's time limit when neither the flag nor `provium.toml` sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

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

fn parse_timeout(input: &str) -> Result<Duration, String> {
    duration::parse(input).map_err(|e| e.to_string())
}

fn parse_partition(input: &str) -> Result<Partition, String> {
    input.parse()
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

    /// The flag wins over `[run] timeout`, which wins over the default; zero is none.
    fn dispatch_options(&self, config: &config::Config) -> DispatchOptions {
        let jobs = match (self.jobs, self.pool_mode()) {
            (Some(n), _) => Some(n as usize),
            (None, PoolMode::Fixed { .. }) => None,
            (None, PoolMode::Auto) => Some(dispatch::default_jobs()),
        };
        let timeout = self
            .timeout
            .or(config.run.timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        DispatchOptions {
            jobs,
            fail_fast: self.fail_fast,
            retries: self.retries,
            timeout: (!timeout.is_zero()).then_some(timeout),
        }
    }
}

impl SelectArgs {
    fn filters(&self) -> Filters {
        Filters {
            patterns: self.filters.clone(),
            partition: self.partition,
            rerun_failed: self.rerun_failed,
        }
    }

    /// Discovers and selects; `None` when `--rerun-failed` has nothing to rerun (the
    /// reason is printed to `note`).
    fn files(
        &self,
        note: &mut dyn Write,
    ) -> anyhow::Result<Option<(Vec<TestFile>, Option<PartitionInfo>)>> {
        let found = discover::discover_all(&self.paths)?;
        match engine::select(found, &self.paths, &self.filters(), &runs::runs_parent())? {
            Selection::Files { files, partition } => Ok(Some((files, partition))),
            Selection::NothingToRerun(why) => {
                // A closed stream must not turn "nothing to do" into an error.
                let _ = writeln!(note, "{why}");
                Ok(None)
            }
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
        Command::List(args) => list(args),
        Command::Kconfig => {
            print!("{}", crate::vm::KCONFIG_FRAGMENT);
            Ok(Exit::Success)
        }
        Command::Shell(args) => shell(args),
        Command::Prepare { profile } => prepare(profile.as_deref()),
        Command::LspSetup { dir } => lsp_setup(dir),
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
    let config = config::load_for(&args.select.paths, &cwd)?;
    let json_on_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    // With `--json -`, stdout carries JSON only: everything else goes to stderr.
    let mut note: Box<dyn Write> = if json_on_stdout {
        Box::new(io::stderr())
    } else {
        Box::new(io::stdout())
    };
    let Some((files, partition_info)) = args.select.files(&mut note)? else {
        return Ok(Exit::Success);
    };
    let dispatch = args.dispatch_options(&config);
    if args.shell_on_failure && !(dispatch.sequential(files.len()) && crate::tty::interactive()) {
        anyhow::bail!(
            "--shell-on-failure needs a terminal and -p 1 (a shell opened in one of several \
             files running at once, or with no one at the terminal, could only hang)"
        );
    }
    let plan = RunPlan {
        files,
        config,
        runs_parent: runs::runs_parent(),
        pool: args.pool_mode(),
        dispatch,
        partition: args.select.partition.zip(partition_info),
        shell_on_failure: args.shell_on_failure,
    };
    let outputs = ReportFiles {
        junit: args.junit.clone(),
        json: args.json.clone(),
        ktap: args.ktap.clone(),
    };
    let mut sinks = outputs.open()?;
    let mut terminal: Reporter<Box<dyn io::Write>> = if json_on_stdout {
        Reporter::new(Box::new(io::stderr()), Style::PLAIN)
    } else {
        Reporter::new(Box::new(io::stdout()), Style::detect())
    };
    let mut output_error = None;
    let summary = engine::run(plan, |event| {
        if let Err(e) = terminal.handle(&event) {
            output_error.get_or_insert(e);
        }
        for sink in sinks.iter_mut() {
            if let Err(e) = sink.handle(&event) {
                output_error.get_or_insert(e);
            }
        }
    })?;
    if let Some(e) = output_error {
        // A closed stdout (e.g. `| head`) must not turn a failing run into a pass.
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write the report");
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

/// `provium lsp-setup [DIR]`.
fn lsp_setup(dir: Option<PathBuf>) -> anyhow::Result<Exit> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    for path in crate::lua::lsp::setup(&dir)? {
        println!("wrote {}", path.display());
    }
    Ok(Exit::Success)
}

/// `provium shell`: one VM, a shell in it, its status as provium's.
fn shell(args: ShellArgs) -> anyhow::Result<Exit> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let config = config::load(&cwd)?;
    let plan = engine::shell::ShellPlan {
        config,
        cwd,
        runs_parent: runs::runs_parent(),
        start: match args.fixture {
            Some(name) => engine::shell::Start::Fixture(name),
            None => engine::shell::Start::Boot {
                profile: args.profile,
                memory: args.mem,
                cpus: args.cpus,
                files: args.files,
                gdb: args.gdb,
            },
        },
        command: args.command,
    };
    let status = engine::shell::run(plan)?;
    Ok(Exit::Status(status))
}

/// `provium prepare`: builds and host-side preparation, one line per ready profile.
fn prepare(only: Option<&str>) -> anyhow::Result<Exit> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let config = config::load(&cwd)?;
    let names = engine::prepare::profiles_to_prepare(&config, only);
    engine::prepare::prepare(
        &config,
        &names,
        &runs::runs_parent(),
        Box::new(|notice| eprintln!("{notice}")),
        |done| {
            let p = &done.prepared;
            let modules = match (&p.modules_tree, &p.modules_disk) {
                (Some(_), Some(disk)) => format!("modules on {}", disk.display()),
                (Some(tree), None) => format!("modules in {}", tree.display()),
                (None, _) => "no modules".to_string(),
            };
            println!(
                "profile '{}': {} in {:.1} s: kernel {} ({}), {modules}",
                done.name,
                if done.built {
                    "built and ready"
                } else {
                    "ready"
                },
                done.took.as_secs_f64(),
                p.release,
                done.kernel.display(),
            );
        },
    )?;
    Ok(Exit::Success)
}

/// `provium list`: the files a `provium test` with the same selection would run.
fn list(args: ListArgs) -> anyhow::Result<Exit> {
    let Some((files, _)) = args.select.files(&mut io::stdout())? else {
        return Ok(Exit::Success);
    };
    let mut out = io::stdout().lock();
    for file in &files {
        let line = if args.json {
            serde_json::json!({
                "file": file.name,
                "path": file.path,
                "root": file.root.key,
            })
            .to_string()
        } else {
            file.name.clone()
        };
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e).context("cannot write the list to stdout");
        }
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> TestArgs {
        let cli = Cli::try_parse_from(args).unwrap();
        match cli.command {
            Command::Test(args) => args,
            other => panic!("expected test, got {other:?}"),
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
        let config = config::Config::empty("/p");
        let auto = parse(&["provium", "test", "t"]).dispatch_options(&config);
        assert!(auto.jobs.unwrap() >= 2);
        let fixed = parse(&["provium", "test", "--mem", "1G", "t"]).dispatch_options(&config);
        assert_eq!(fixed.jobs, None);
        let explicit = parse(&["provium", "test", "--mem", "1G", "-p", "3", "t"]);
        assert_eq!(explicit.dispatch_options(&config).jobs, Some(3));
    }

    #[test]
    fn the_timeout_flag_wins_over_the_config_and_zero_lifts_it() {
        let mut config = config::Config::empty("/p");
        let default = parse(&["provium", "test", "t"]).dispatch_options(&config);
        assert_eq!(default.timeout, Some(Duration::from_secs(300)));
        config.run.timeout = Some(Duration::from_secs(600));
        let from_config = parse(&["provium", "test", "t"]).dispatch_options(&config);
        assert_eq!(from_config.timeout, Some(Duration::from_secs(600)));
        let flag = parse(&["provium", "test", "--timeout", "500ms", "t"]);
        assert_eq!(
            flag.dispatch_options(&config).timeout,
            Some(Duration::from_millis(500))
        );
        let none = parse(&["provium", "test", "--timeout", "0", "t"]);
        assert_eq!(none.dispatch_options(&config).timeout, None);
        assert_eq!(
            run(["provium", "test", "--timeout", "soon", "t"]),
            Exit::Error
        );
    }

    #[test]
    fn filters_repeat_and_paths_are_many() {
        let args = parse(&[
            "provium",
            "test",
            "-f",
            "a",
            "-f",
            "b",
            "--fail-fast",
            "t",
            "u.lua",
        ]);
        assert_eq!(args.select.filters, ["a", "b"]);
        assert_eq!(
            args.select.paths,
            [PathBuf::from("t"), PathBuf::from("u.lua")]
        );
        assert!(args.fail_fast);
        let sharded = parse(&["provium", "test", "--partition", "hash:2/3", "t"]);
        assert_eq!(sharded.select.partition.unwrap().to_string(), "hash:2/3");
        assert_eq!(
            run(["provium", "test", "--partition", "count:4/3", "t"]),
            Exit::Error
        );
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
