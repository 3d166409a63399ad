//! Helpers for running the built `provium` binary over small Lua trees.

#![allow(dead_code)]

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use regex::Regex;
use tempfile::TempDir;

/// A temporary test tree plus a private runs directory (`PROVIUM_RUNS_DIR`).
pub struct Sandbox {
    pub dir: TempDir,
    pub runs: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let runs = dir.path().join("runs");
        Sandbox { dir, runs }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `files` (relative path, contents) under `<sandbox>/<tree>/`.
    pub fn tree(&self, tree: &str, files: &[(&str, &str)]) -> PathBuf {
        let base = self.dir.path().join(tree);
        fs::create_dir_all(&base).expect("create tree");
        for (rel, contents) in files {
            self.write(&format!("{tree}/{rel}"), contents);
        }
        base
    }

    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).expect("create parent");
        fs::write(path, contents).expect("write file");
    }

    /// Runs `provium <args>` in the sandbox directory.
    pub fn provium(&self, args: &[&str]) -> Run {
        self.provium_with_env(args, &[])
    }

    /// Runs `provium <args>` in the sandbox's subdirectory `dir`.
    pub fn provium_in(&self, dir: &str, args: &[&str]) -> Run {
        self.provium_at(&self.dir.path().join(dir), args, &[])
    }

    /// Runs `provium <args>` in the sandbox directory with `env` added.
    pub fn provium_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.provium_at(self.dir.path(), args, env)
    }

    fn provium_at(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_provium"));
        command
            .args(args)
            .current_dir(cwd)
            .env("PROVIUM_RUNS_DIR", &self.runs)
            .env_remove("NO_COLOR")
            .envs(env.iter().copied());
        let output = command.output().expect("run provium");
        Run::new(args, self.dir.path(), output)
    }

    /// Run directories currently present under the runs parent.
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.runs) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
            })
            .collect();
        dirs.sort();
        dirs
    }
}

/// One finished invocation; its Display shows everything needed to debug a failure.
pub struct Run {
    pub command: String,
    pub dir: PathBuf,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn new(args: &[&str], dir: &Path, output: Output) -> Run {
        Run {
            command: format!("provium {}", args.join(" ")),
            dir: dir.to_path_buf(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "unexpected exit code\n{self}");
        self
    }

    /// stdout with durations and run ids replaced by stable placeholders.
    pub fn redacted(&self) -> String {
        redact(&self.stdout)
    }

    pub fn assert_stdout(&self, expected: &str) {
        assert_eq!(
            self.redacted(),
            expected,
            "stdout differs (left: redacted actual, right: expected)\n{self}"
        );
    }

    pub fn assert_stderr_contains(&self, needle: &str) {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
    }

    pub fn assert_stdout_contains(&self, needle: &str) {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
    }

    /// The log paths listed under `Failed test logs:`.
    pub fn listed_logs(&self) -> Vec<PathBuf> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once(" → ").map(|(_, p)| PathBuf::from(p.trim())))
            .collect()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\ndir: {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.dir.display(),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// Replaces `1.2s` durations with `T` and `run-<id>` with `run-ID`.
pub fn redact(text: &str) -> String {
    let durations = Regex::new(r"\d+\.\ds\)").unwrap();
    let ids = Regex::new(r"run-[0-9a-z]{8}").unwrap();
    let text = durations.replace_all(text, "T)");
    ids.replace_all(&text, "run-ID").into_owned()
}

/// QEMU processes whose command line mentions `dir` (their sockets live there).
pub fn qemus_under(dir: &Path) -> Vec<String> {
    let output = Command::new("pgrep")
        .arg("-af")
        .arg(format!("[q]emu-system.*{}", dir.display()))
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
