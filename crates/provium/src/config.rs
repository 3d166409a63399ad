//! `provium.toml` loading and profile resolution.
//!
//! The file is parsed by hand from a `toml::Table` rather than through serde so that
//! every error can name the profile, the key and the file it concerns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The file searched for from the start directory upward.
pub const CONFIG_FILE: &str = "provium.toml";

const PROFILE_KEYS: [&str; 8] = [
    "kernel", "initrd", "rootfs", "init", "append", "modules", "build", "machine",
];
const RUN_KEYS: [&str; 1] = ["timeout"];

/// A loaded `provium.toml` (or the absence of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file that was loaded; `None` when no `provium.toml` was found.
    pub path: Option<PathBuf>,
    /// The project root: the directory holding the file, or the start directory when
    /// there is none. Relative paths (profile paths, `files` of a boot) resolve here.
    pub root: PathBuf,
    pub profiles: BTreeMap<String, Profile>,
    /// The `[run]` table: defaults for `provium test` that its flags override.
    pub run: RunSettings,
}

/// `[run]`: run defaults kept with the project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSettings {
    /// Each file's time limit (`timeout = "10m"` or seconds); zero means none.
    pub timeout: Option<std::time::Duration>,
}

/// One `[profile.NAME]` table with its paths resolved against the project root and
/// checked to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    /// The guest's PID 1 after the agent starts: an absolute guest path or `none`.
    pub init: Option<String>,
    pub append: Option<String>,
    /// The kernel's modules: a kernel build tree or an `INSTALL_MOD_PATH` tree.
    pub modules: Option<PathBuf>,
    /// A shell command run once per run, from the project root, before the first boot.
    pub build: Option<String>,
    /// `pc` or `microvm`; `None`: Provium chooses.
    pub machine: Option<Machine>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("profile '{profile}': machine '{value}' is not a machine Provium boots: use \"pc\", \"q35\" or \"microvm\", or leave it out to let Provium choose (in {})", path.display())]
    BadMachine {
        path: PathBuf,
        profile: String,
        value: String,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{} and {} belong to different projects ({} and {}): run each project on its own",
        paths[0].display(), paths[1].display(), configs[0].display(), configs[1].display()
    )]
    TwoProjects {
        paths: [PathBuf; 2],
        configs: [PathBuf; 2],
    },
    #[error("{}: unknown top-level key '{key}' (only [profile.NAME] tables and [run] are allowed)", path.display())]
    UnknownTopLevel { path: PathBuf, key: String },
    #[error("{}: [run]: unknown key '{key}' (known keys: {})", path.display(), RUN_KEYS.join(", "))]
    UnknownRunKey { path: PathBuf, key: String },
    #[error("{}: [run]: {key}: {reason}", path.display())]
    BadRunValue {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("{}: 'profile' must hold [profile.NAME] tables", path.display())]
    ProfilesNotTables { path: PathBuf },
    #[error("profile '{profile}': must be a table of keys (in {})", path.display())]
    ProfileNotTable { path: PathBuf, profile: String },
    #[error("profile '{profile}': unknown key '{key}' (known keys: {}) in {}", PROFILE_KEYS.join(", "), path.display())]
    UnknownKey {
        path: PathBuf,
        profile: String,
        key: String,
    },
    #[error("profile '{profile}': {key} must be a string, not {found} (in {})", path.display())]
    NotAString {
        path: PathBuf,
        profile: String,
        key: &'static str,
        found: &'static str,
    },
    #[error("profile '{profile}': missing required key 'kernel' (set kernel in {})", path.display())]
    MissingKernel { path: PathBuf, profile: String },
    #[error("profile '{profile}': {key} '{}' {problem} (set {key} in {})", file.display(), path.display())]
    BadPath {
        path: PathBuf,
        profile: String,
        key: &'static str,
        file: PathBuf,
        problem: String,
    },
    #[error("profile '{profile}': init '{init}' must be an absolute guest path or \"none\" (set init in {})", path.display())]
    BadInit {
        path: PathBuf,
        profile: String,
        init: String,
    },
    #[error(
        "unknown profile '{name}'; known profiles: {}{}",
        known_list(known),
        where_defined(config, root)
    )]
    UnknownProfile {
        name: String,
        known: Vec<String>,
        config: Option<PathBuf>,
        root: PathBuf,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    }
}

fn where_defined(config: &Option<PathBuf>, root: &Path) -> String {
    match config {
        Some(path) => format!(" (profiles are defined in {})", path.display()),
        None => format!(
            " (no {CONFIG_FILE} was found in {} or any parent directory)",
            root.display()
        ),
    }
}

/// The configuration of a run of `test_paths`: the nearest `provium.toml` from each
/// test path upward, else from `cwd` upward, so `provium test suite/` from a parent
/// directory uses `suite/provium.toml` as running inside `suite/` would. Paths that
/// lead to different files are refused: one run has one project.
pub fn load_for(test_paths: &[PathBuf], cwd: &Path) -> Result<Config, ConfigError> {
    let mut found: Option<(PathBuf, PathBuf)> = None;
    for test_path in test_paths {
        let Some(config) = find_for(test_path, cwd) else {
            continue;
        };
        match &found {
            None => found = Some((config, test_path.clone())),
            Some((first, first_path)) if *first != config => {
                return Err(ConfigError::TwoProjects {
                    paths: [first_path.clone(), test_path.clone()],
                    configs: [first.clone(), config],
                })
            }
            Some(_) => {}
        }
    }
    match found {
        Some((path, _)) => load_file(&path),
        None => load(cwd),
    }
}

/// The `provium.toml` that governs `test_path`: from its directory upward, else from
/// `cwd` upward.
fn find_for(test_path: &Path, cwd: &Path) -> Option<PathBuf> {
    let test_path = cwd.join(test_path);
    let start = if test_path.is_dir() {
        test_path
    } else {
        test_path
            .parent()
            .map_or(cwd.to_path_buf(), Path::to_path_buf)
    };
    let start = std::path::absolute(&start).unwrap_or(start);
    let start = std::fs::canonicalize(&start).unwrap_or(start);
    find(&start).or_else(|| find(&std::path::absolute(cwd).unwrap_or(cwd.to_path_buf())))
}

/// Finds the nearest `provium.toml` from `start_dir` upward and loads it. No file is
/// not an error: the result has no profiles and `root` is `start_dir`.
pub fn load(start_dir: &Path) -> Result<Config, ConfigError> {
    let start = std::path::absolute(start_dir).unwrap_or_else(|_| start_dir.to_path_buf());
    match find(&start) {
        Some(path) => load_file(&path),
        None => Ok(Config::empty(start)),
    }
}

/// The nearest `provium.toml` in `start_dir` or one of its parents.
pub fn find(start_dir: &Path) -> Option<PathBuf> {
    start_dir
        .ancestors()
        .map(|dir| dir.join(CONFIG_FILE))
        .find(|candidate| candidate.exists())
}

/// Loads one specific config file; its directory is the project root.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = e
            .span()
            .map(|span| line_and_column(&text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })?;

    let mut profiles = BTreeMap::new();
    let mut run = RunSettings::default();
    for (key, value) in &table {
        if key == "run" {
            run = parse_run(path, value)?;
            continue;
        }
        if key != "profile" {
            return Err(ConfigError::UnknownTopLevel {
                path: path.to_path_buf(),
                key: key.clone(),
            });
        }
        let toml::Value::Table(entries) = value else {
            return Err(ConfigError::ProfilesNotTables {
                path: path.to_path_buf(),
            });
        };
        for (name, body) in entries {
            let profile = parse_profile(path, &root, name, body)?;
            profiles.insert(name.clone(), profile);
        }
    }
    Ok(Config {
        path: Some(path.to_path_buf()),
        root,
        profiles,
        run,
    })
}

fn parse_run(path: &Path, value: &toml::Value) -> Result<RunSettings, ConfigError> {
    let bad = |key: &'static str, reason: String| ConfigError::BadRunValue {
        path: path.to_path_buf(),
        key,
        reason,
    };
    let toml::Value::Table(keys) = value else {
        return Err(bad("[run]", "must be a table of keys".to_string()));
    };
    if let Some(unknown) = keys.keys().find(|k| !RUN_KEYS.contains(&k.as_str())) {
        return Err(ConfigError::UnknownRunKey {
            path: path.to_path_buf(),
            key: unknown.clone(),
        });
    }
    let timeout = match keys.get("timeout") {
        None => None,
        Some(toml::Value::String(text)) => {
            Some(crate::duration::parse(text).map_err(|e| bad("timeout", e.to_string()))?)
        }
        Some(toml::Value::Integer(n)) => Some(
            crate::duration::from_seconds(*n as f64).map_err(|e| bad("timeout", e.to_string()))?,
        ),
        Some(toml::Value::Float(n)) => {
            Some(crate::duration::from_seconds(*n).map_err(|e| bad("timeout", e.to_string()))?)
        }
        Some(other) => {
            return Err(bad(
                "timeout",
                format!(
                    "must be a duration (\"10m\") or seconds, not {}",
                    other.type_str()
                ),
            ))
        }
    };
    Ok(RunSettings { timeout })
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn parse_profile(
    path: &Path,
    root: &Path,
    name: &str,
    body: &toml::Value,
) -> Result<Profile, ConfigError> {
    let toml::Value::Table(keys) = body else {
        return Err(ConfigError::ProfileNotTable {
            path: path.to_path_buf(),
            profile: name.to_string(),
        });
    };
    if let Some(unknown) = keys.keys().find(|k| !PROFILE_KEYS.contains(&k.as_str())) {
        return Err(ConfigError::UnknownKey {
            path: path.to_path_buf(),
            profile: name.to_string(),
            key: unknown.clone(),
        });
    }
    let string = |key: &'static str| -> Result<Option<String>, ConfigError> {
        match keys.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ConfigError::NotAString {
                path: path.to_path_buf(),
                profile: name.to_string(),
                key,
                found: other.type_str(),
            }),
        }
    };
    let existing_file = |key: &'static str| -> Result<Option<PathBuf>, ConfigError> {
        let Some(value) = string(key)? else {
            return Ok(None);
        };
        let file = root.join(value);
        check_file(&file).map_err(|problem| ConfigError::BadPath {
            path: path.to_path_buf(),
            profile: name.to_string(),
            key,
            file: file.clone(),
            problem,
        })?;
        Ok(Some(file))
    };

    let build = string("build")?;
    // A profile that builds its kernel may name files the build makes: they are
    // checked after the build, when its first VM boots.
    let resolved = |key: &'static str| -> Result<Option<PathBuf>, ConfigError> {
        if build.is_some() {
            Ok(string(key)?.map(|value| root.join(value)))
        } else {
            existing_file(key)
        }
    };
    let kernel = resolved("kernel")?.ok_or_else(|| ConfigError::MissingKernel {
        path: path.to_path_buf(),
        profile: name.to_string(),
    })?;
    let initrd = resolved("initrd")?;
    let rootfs = resolved("rootfs")?;
    let modules = match string("modules")? {
        None => None,
        Some(value) => {
            let dir = root.join(value);
            if build.is_none() && !dir.is_dir() {
                return Err(ConfigError::BadPath {
                    path: path.to_path_buf(),
                    profile: name.to_string(),
                    key: "modules",
                    file: dir,
                    problem: "is not a directory".to_string(),
                });
            }
            Some(dir)
        }
    };
    let init = string("init")?;
    if let Some(init) = &init {
        if init != "none" && !init.starts_with('/') {
            return Err(ConfigError::BadInit {
                path: path.to_path_buf(),
                profile: name.to_string(),
                init: init.clone(),
            });
        }
    }
    let machine = match string("machine")? {
        None => None,
        Some(value) => Some(
            Machine::parse(&value).ok_or_else(|| ConfigError::BadMachine {
                path: path.to_path_buf(),
                profile: name.to_string(),
                value,
            })?,
        ),
    };
    Ok(Profile {
        name: name.to_string(),
        kernel,
        initrd,
        rootfs,
        init,
        append: string("append")?,
        modules,
        build,
        machine,
    })
}

/// Checks that `file` exists, is not a directory and can be opened; the error is the
/// problem phrased to follow the path in a message.
fn check_file(file: &Path) -> Result<(), String> {
    match std::fs::metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("does not exist".to_string()),
        Err(e) => Err(format!("cannot be inspected: {e}")),
        Ok(meta) if meta.is_dir() => Err("is a directory, not a file".to_string()),
        Ok(_) => std::fs::File::open(file)
            .map(drop)
            .map_err(|e| format!("cannot be read: {e}")),
    }
}

impl Config {
    /// A configuration with no profiles whose project root is `root`.
    pub fn empty(root: impl Into<PathBuf>) -> Config {
        Config {
            path: None,
            root: root.into(),
            profiles: BTreeMap::new(),
            run: RunSettings::default(),
        }
    }

    /// The profile defined in the file under `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// The profile `name`, or an error naming it and listing the known profiles: the
    /// file's plus `builtin` (profiles the caller supplies itself, such as `default`).
    pub fn profile(&self, name: &str, builtin: &[&str]) -> Result<&Profile, ConfigError> {
        self.get(name)
            .ok_or_else(|| self.unknown_profile(name, builtin))
    }

    /// The error for a profile that is neither in the file nor built in.
    pub fn unknown_profile(&self, name: &str, builtin: &[&str]) -> ConfigError {
        ConfigError::UnknownProfile {
            name: name.to_string(),
            known: self.profile_names(builtin),
            config: self.path.clone(),
            root: self.root.clone(),
        }
    }

    /// Every profile name, the file's and `builtin`, sorted and without duplicates.
    pub fn profile_names(&self, builtin: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = self
            .profiles
            .keys()
            .cloned()
            .chain(builtin.iter().map(|b| b.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// `path` resolved against the project root (absolute paths stay as they are).
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        self.root.join(path)
    }
}

/// A profile's `machine`: the QEMU machine model its VMs boot on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Machine {
    /// i440fx + PIIX: PCI, every kernel boots on it.
    Pc,
    /// Q35 + ICH9: PCI Express, interrupts routed from a static ACPI table.
    Q35,
    /// No PCI: virtio-mmio devices, a PVH `vmlinux`.
    Microvm,
}

impl Machine {
    /// The profile key's values.
    pub fn parse(text: &str) -> Option<Machine> {
        match text {
            "pc" => Some(Machine::Pc),
            "q35" => Some(Machine::Q35),
            "microvm" => Some(Machine::Microvm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        }
    }

    /// The virtio device model of a kind (`serial`, `blk`, `net`) on this machine.
    pub fn virtio(self, kind: &str) -> String {
        match self {
            Machine::Pc | Machine::Q35 => format!("virtio-{kind}-pci"),
            Machine::Microvm => format!("virtio-{kind}-device"),
        }
    }

    /// Whether the machine has the second UART the agent falls back to.
    pub fn has_fallback_uart(self) -> bool {
        self != Machine::Microvm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Project {
        dir: tempfile::TempDir,
    }

    impl Project {
        fn new() -> Project {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("bzImage"), b"kernel").unwrap();
            fs::write(dir.path().join("rootfs.cpio"), b"cpio").unwrap();
            Project { dir }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn config(&self, text: &str) -> PathBuf {
            let path = self.root().join(CONFIG_FILE);
            fs::write(&path, text).unwrap();
            path
        }

        fn load_err(&self, text: &str) -> String {
            self.config(text);
            load(self.root()).unwrap_err().to_string()
        }
    }

    #[test]
    fn no_file_means_no_profiles_rooted_at_the_start_dir() {
        let project = Project::new();
        let config = load(project.root()).unwrap();
        assert_eq!(config.path, None);
        assert_eq!(config.root, project.root());
        assert!(config.profiles.is_empty());
        let err = config.profile("default", &[]).unwrap_err().to_string();
        assert!(err.contains("no provium.toml was found in"), "{err}");
    }

    #[test]
    fn a_full_profile_loads_with_paths_resolved_against_the_root() {
        let project = Project::new();
        fs::create_dir(project.root().join("disks")).unwrap();
        fs::write(project.root().join("disks/root.img"), b"img").unwrap();
        let path = project.config(
            r#"
            [profile.minimal]
            kernel = "bzImage"
            initrd = "rootfs.cpio"
            rootfs = "disks/root.img"
            init = "/sbin/init"
            append = "loglevel=7"
            "#,
        );
        let config = load(project.root()).unwrap();
        assert_eq!(config.path.as_deref(), Some(path.as_path()));
        let profile = config.profile("minimal", &["default"]).unwrap();
        assert_eq!(
            profile,
            &Profile {
                name: "minimal".to_string(),
                kernel: project.root().join("bzImage"),
                initrd: Some(project.root().join("rootfs.cpio")),
                rootfs: Some(project.root().join("disks/root.img")),
                init: Some("/sbin/init".to_string()),
                append: Some("loglevel=7".to_string()),
                modules: None,
                build: None,
                machine: None,
            }
        );
        assert_eq!(config.resolve("a/b"), project.root().join("a/b"));
        assert_eq!(config.resolve("/abs"), PathBuf::from("/abs"));
    }

    #[test]
    fn the_run_table_sets_the_timeout_and_names_bad_values() {
        let project = Project::new();
        project.config("[run]\ntimeout = \"10m\"\n");
        let config = load(project.root()).unwrap();
        assert_eq!(
            config.run.timeout,
            Some(std::time::Duration::from_secs(600))
        );
        project.config("[run]\ntimeout = 90\n");
        assert_eq!(
            load(project.root()).unwrap().run.timeout,
            Some(std::time::Duration::from_secs(90))
        );
        let err = project.load_err("[run]\ntimeout = \"soon\"\n");
        assert!(
            err.contains("[run]: timeout: invalid duration 'soon'"),
            "{err}"
        );
        let err = project.load_err("[run]\ntimout = 5\n");
        assert!(
            err.contains("[run]: unknown key 'timout' (known keys: timeout)"),
            "{err}"
        );
    }

    #[test]
    fn the_nearest_file_upward_wins() {
        let project = Project::new();
        project.config("[profile.outer]\nkernel = \"bzImage\"\n");
        let inner = project.root().join("inner");
        let start = inner.join("tests/deep");
        fs::create_dir_all(&start).unwrap();
        let config = load(&start).unwrap();
        assert_eq!(config.root, project.root());
        assert!(config.get("outer").is_some());

        fs::write(
            inner.join(CONFIG_FILE),
            "[profile.inner]\nkernel = \"../bzImage\"\n",
        )
        .unwrap();
        let config = load(&start).unwrap();
        assert_eq!(config.root, inner);
        assert_eq!(config.profile_names(&[]), ["inner"]);
        assert_eq!(config.profiles["inner"].kernel, inner.join("../bzImage"));
    }

    #[test]
    fn a_missing_kernel_file_names_profile_key_and_paths() {
        let project = Project::new();
        let err = project.load_err("[profile.minimal]\nkernel = \"/x/bzImage\"\n");
        assert_eq!(
            err,
            format!(
                "profile 'minimal': kernel '/x/bzImage' does not exist (set kernel in {})",
                project.root().join(CONFIG_FILE).display()
            )
        );
    }

    #[test]
    fn a_missing_initrd_or_rootfs_is_an_error() {
        let project = Project::new();
        let err = project.load_err("[profile.m]\nkernel = \"bzImage\"\ninitrd = \"nope.cpio\"\n");
        assert!(
            err.starts_with("profile 'm': initrd '") && err.contains("nope.cpio' does not exist"),
            "{err}"
        );
        let err = project.load_err("[profile.m]\nkernel = \"bzImage\"\nrootfs = \"disk.img\"\n");
        assert!(
            err.contains("rootfs '") && err.contains("(set rootfs in"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_is_not_a_kernel() {
        let project = Project::new();
        let err = project.load_err("[profile.m]\nkernel = \".\"\n");
        assert!(err.contains("is a directory, not a file"), "{err}");
    }

    #[test]
    fn kernel_is_required() {
        let project = Project::new();
        let err = project.load_err("[profile.nokernel]\ninitrd = \"rootfs.cpio\"\n");
        assert!(
            err.starts_with("profile 'nokernel': missing required key 'kernel'"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_tables_are_rejected() {
        let project = Project::new();
        let err = project.load_err("[profile.m]\nkernel = \"bzImage\"\nmachine = \"virt\"\n");
        assert!(
            err.starts_with("profile 'm': machine 'virt' is not a machine Provium boots: use \"pc\", \"q35\" or \"microvm\""),
            "{err}"
        );
        let err = project.load_err("[profile.m]\nkernel = \"bzImage\"\nkernal = \"x\"\n");
        assert!(
            err.starts_with("profile 'm': unknown key 'kernal' (known keys: kernel, initrd"),
            "{err}"
        );
        assert!(err.contains(CONFIG_FILE), "{err}");
        let err = project.load_err("[profiles.m]\nkernel = \"bzImage\"\n");
        assert!(err.contains("unknown top-level key 'profiles'"), "{err}");
        let err = project.load_err("profile = 3\n");
        assert!(
            err.contains("'profile' must hold [profile.NAME] tables"),
            "{err}"
        );
        let err = project.load_err("[profile]\nm = \"x\"\n");
        assert!(err.starts_with("profile 'm': must be a table"), "{err}");
    }

    #[test]
    fn values_must_be_strings_and_init_absolute() {
        let project = Project::new();
        let err = project.load_err("[profile.m]\nkernel = 42\n");
        assert!(
            err.starts_with("profile 'm': kernel must be a string, not integer"),
            "{err}"
        );
        let err = project.load_err("[profile.m]\nkernel = \"bzImage\"\ninit = \"sbin/init\"\n");
        assert!(
            err.contains("init 'sbin/init' must be an absolute guest path"),
            "{err}"
        );
        project.config("[profile.m]\nkernel = \"bzImage\"\ninit = \"none\"\n");
        assert_eq!(
            load(project.root()).unwrap().profiles["m"].init.as_deref(),
            Some("none")
        );
    }

    #[test]
    fn syntax_errors_carry_file_and_line() {
        let project = Project::new();
        let err = project.load_err("[profile.m]\nkernel = \"bzImage\n");
        assert!(
            err.starts_with(&format!(
                "{}:2:",
                project.root().join(CONFIG_FILE).display()
            )),
            "{err}"
        );
        assert!(err.contains("invalid TOML"), "{err}");
    }

    #[test]
    fn an_unknown_profile_lists_file_and_builtin_profiles() {
        let project = Project::new();
        project.config(
            "[profile.minimal]\nkernel = \"bzImage\"\n[profile.debug]\nkernel = \"bzImage\"\n",
        );
        let config = load(project.root()).unwrap();
        let err = config
            .profile("nope", &["default"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "unknown profile 'nope'; known profiles: debug, default, minimal (profiles are defined in {})",
                project.root().join(CONFIG_FILE).display()
            )
        );
    }

    #[test]
    fn an_unreadable_config_names_its_path() {
        let project = Project::new();
        fs::create_dir(project.root().join(CONFIG_FILE)).unwrap();
        let err = load(project.root()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read {}",
                project.root().join(CONFIG_FILE).display()
            )),
            "{err}"
        );
    }
}
