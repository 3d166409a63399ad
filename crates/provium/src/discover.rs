//! Test-file discovery under test roots.
//!
//! A directory is walked recursively for `*.lua` files, skipping every directory named
//! `fixtures` below the root (fixture scripts are run on request, not as tests).
//! Symlinked files are followed; symlinked directories are not descended into, so a
//! link cycle cannot make discovery loop. Names are `/`-separated paths relative to
//! the root, sorted byte-wise. Several paths (`provium test a.lua b/ c/`) each keep
//! their own root; their files are merged into one sorted list.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DiscoverError {
    #[error("test path {path} does not exist")]
    Missing { path: PathBuf },
    #[error("test path {path} is neither a directory nor a .lua file")]
    NotLua { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("two test files are both named {name} ({} and {}); give one directory holding both instead", .first.display(), .second.display())]
    SameName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// The `<path>` argument a file was found under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Canonical form of the argument: the key of `--rerun-failed` records.
    pub key: PathBuf,
    /// Canonical directory searched by `require` and, upward from the file, for
    /// fixtures: the argument itself, or the directory holding a single-file argument.
    pub dir: PathBuf,
}

/// One test file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFile {
    /// Relative to its root, `/`-separated; the file name for a single-file argument.
    pub name: String,
    /// The path to open: the `<path>` argument joined with `name`.
    pub path: PathBuf,
    pub root: Arc<Root>,
}

impl TestFile {
    /// A file named `name` at `path` under the directory `root` (its own key).
    pub fn new(name: &str, path: PathBuf, root: &Path) -> TestFile {
        TestFile {
            name: name.to_string(),
            path,
            root: Arc::new(Root {
                key: root.to_path_buf(),
                dir: root.to_path_buf(),
            }),
        }
    }
}

/// What a `<path>` argument resolved to.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub root: Arc<Root>,
    pub files: Vec<TestFile>,
}

/// Resolves every `<path>` and merges their files, sorted by name. The same file given
/// twice runs once; two different files with one name are an error (their logs and
/// records would collide).
pub fn discover_all(paths: &[PathBuf]) -> Result<Vec<TestFile>, DiscoverError> {
    let mut by_name: BTreeMap<Vec<u8>, TestFile> = BTreeMap::new();
    for path in paths {
        for file in discover(path)?.files {
            let key = file.name.as_bytes().to_vec();
            match by_name.get(&key) {
                Some(seen) if same_file(&seen.path, &file.path) => {}
                Some(seen) => {
                    return Err(DiscoverError::SameName {
                        name: file.name.clone(),
                        first: seen.path.clone(),
                        second: file.path,
                    })
                }
                None => {
                    by_name.insert(key, file);
                }
            }
        }
    }
    Ok(by_name.into_values().collect())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
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
        let root = Arc::new(Root {
            key: canonical.clone(),
            dir: canonical,
        });
        let mut files = Vec::new();
        walk(path, "", &root, &mut files)?;
        files.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        return Ok(Discovered { root, files });
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
    let root = Arc::new(Root {
        key: canonical,
        dir: root_dir,
    });
    Ok(Discovered {
        files: vec![TestFile {
            name,
            path: path.to_path_buf(),
            root: Arc::clone(&root),
        }],
        root,
    })
}

fn is_lua(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "lua")
}

fn walk(
    dir: &Path,
    prefix: &str,
    root: &Arc<Root>,
    files: &mut Vec<TestFile>,
) -> Result<(), DiscoverError> {
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
                walk(&path, &format!("{name}/"), root, files)?;
            }
        } else if is_lua(&path) && (file_type.is_file() || path.is_file()) {
            files.push(TestFile {
                name,
                path,
                root: Arc::clone(root),
            });
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
        assert_eq!(found.root.dir, canonical);
        assert_eq!(found.root.key, canonical.join("t.lua"));
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
            .map(|n| TestFile::new(n, PathBuf::from(n), Path::new("/t")))
            .collect();
        let kept = filter(files.clone(), &["net/".into(), "token".into()]);
        let kept: Vec<_> = kept.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(kept, ["net/tcp.lua", "token.lua"]);
        assert_eq!(filter(files, &[]).len(), 3);
    }

    #[test]
    fn several_paths_merge_keep_their_roots_and_refuse_clashing_names() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["a/one.lua", "a/sub/two.lua", "b/three.lua", "c/one.lua"] {
            touch(dir.path(), rel);
        }
        let a = dir.path().join("a");
        let files =
            discover_all(&[dir.path().join("b/three.lua"), a.clone(), a.join("one.lua")]).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["one.lua", "sub/two.lua", "three.lua"]);
        assert_eq!(files[0].root.dir, fs::canonicalize(&a).unwrap());
        assert_eq!(
            files[2].root.dir,
            fs::canonicalize(dir.path().join("b")).unwrap()
        );
        let clash = discover_all(&[a, dir.path().join("c")]).unwrap_err();
        assert!(
            clash
                .to_string()
                .starts_with("two test files are both named one.lua"),
            "{clash}"
        );
    }
}
