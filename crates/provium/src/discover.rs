//! Test-file discovery under a test root.
//!
//! A directory is walked recursively for `*.lua` files, skipping every directory named
//! `fixtures` below the root (fixture scripts are run on request, not as tests).
//! Symlinked files are followed; symlinked directories are not descended into, so a
//! link cycle cannot make discovery loop. Names are `/`-separated paths relative to
//! the root, sorted byte-wise.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DiscoverError {
    #[error("test path {path} does not exist")]
    Missing { path: PathBuf },
    #[error("test path {path} is neither a directory nor a .lua file")]
    NotLua { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// One test file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFile {
    /// Relative to the root, `/`-separated; the file name for a single-file argument.
    pub name: String,
    /// The path to open: the `<path>` argument joined with `name`.
    pub path: PathBuf,
}

/// What a `<path>` argument resolved to.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// Canonical form of the argument: the key of `--rerun-failed` records.
    pub root_key: PathBuf,
    /// Canonical directory searched by `require`: the argument itself, or the
    /// directory holding a single-file argument.
    pub root_dir: PathBuf,
    pub files: Vec<TestFile>,
}

/// Resolves `<path>`: a directory (walked) or one `.lua` file.
pub fn discover(path: &Path) -> Result<Discovered, DiscoverError> {
    let metadata = fs::metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => DiscoverError::Missing {
            path: path.to_path_buf(),
        },
        _ => DiscoverError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let canonical = fs::canonicalize(path).map_err(|source| DiscoverError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if metadata.is_dir() {
        let mut files = Vec::new();
        walk(path, "", &mut files)?;
        files.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        return Ok(Discovered {
            root_key: canonical.clone(),
            root_dir: canonical,
            files,
        });
    }
    if !is_lua(path) {
        return Err(DiscoverError::NotLua {
            path: path.to_path_buf(),
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root_dir = canonical
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok(Discovered {
        root_key: canonical,
        root_dir,
        files: vec![TestFile {
            name,
            path: path.to_path_buf(),
        }],
    })
}

fn is_lua(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "lua")
}

fn walk(dir: &Path, prefix: &str, files: &mut Vec<TestFile>) -> Result<(), DiscoverError> {
    let read_error = |source| DiscoverError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| DiscoverError::Read {
            path: path.clone(),
            source,
        })?;
        let name = format!("{prefix}{file_name}");
        if file_type.is_dir() {
            if file_name != "fixtures" {
                walk(&path, &format!("{name}/"), files)?;
            }
        } else if is_lua(&path) && (file_type.is_file() || path.is_file()) {
            files.push(TestFile { name, path });
        }
    }
    Ok(())
}

/// Keeps the files whose name contains any of `patterns`; no patterns keeps all.
pub fn filter(files: Vec<TestFile>, patterns: &[String]) -> Vec<TestFile> {
    if patterns.is_empty() {
        return files;
    }
    files
        .into_iter()
        .filter(|f| patterns.iter().any(|p| f.name.contains(p.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }

    fn names(d: &Discovered) -> Vec<&str> {
        d.files.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn walks_sorted_and_skips_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "b.lua",
            "a.lua",
            "Z.lua",
            "sub/x.lua",
            "sub-a.lua",
            "fixtures/f.lua",
            "sub/fixtures/g.lua",
            "notes.txt",
            "sub/deeper/y.lua",
        ] {
            touch(dir.path(), rel);
        }
        let found = discover(dir.path()).unwrap();
        // Byte-wise: uppercase before lowercase, '-' (0x2d) before '/' (0x2f).
        assert_eq!(
            names(&found),
            [
                "Z.lua",
                "a.lua",
                "b.lua",
                "sub-a.lua",
                "sub/deeper/y.lua",
                "sub/x.lua"
            ]
        );
        assert_eq!(found.files[0].path, dir.path().join("Z.lua"));
    }

    #[test]
    fn single_file_uses_its_name_and_parent_as_root() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "sub/t.lua");
        let found = discover(&dir.path().join("sub/t.lua")).unwrap();
        assert_eq!(names(&found), ["t.lua"]);
        let canonical = fs::canonicalize(dir.path().join("sub")).unwrap();
        assert_eq!(found.root_dir, canonical);
        assert_eq!(found.root_key, canonical.join("t.lua"));
    }

    #[test]
    fn bad_paths_are_named() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "readme.txt");
        let missing = discover(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, DiscoverError::Missing { .. }));
        assert!(missing.to_string().contains("nope"));
        let not_lua = discover(&dir.path().join("readme.txt")).unwrap_err();
        assert!(matches!(not_lua, DiscoverError::NotLua { .. }));
    }

    #[test]
    fn filters_match_any_substring_of_the_relative_name() {
        let files: Vec<TestFile> = ["net/tcp.lua", "fs/ext4.lua", "token.lua"]
            .iter()
            .map(|n| TestFile {
                name: n.to_string(),
                path: PathBuf::from(n),
            })
            .collect();
        let kept = filter(files.clone(), &["net/".into(), "token".into()]);
        let kept: Vec<_> = kept.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(kept, ["net/tcp.lua", "token.lua"]);
        assert_eq!(filter(files, &[]).len(), 3);
    }
}
