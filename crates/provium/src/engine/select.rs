//! Which files a run takes: `-f` patterns, then the `--partition` shard, then
//! `--rerun-failed` (what failed when those files last ran, per root and shard). The
//! same selection serves `provium test` and `provium list`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use crate::discover::{self, TestFile};
use crate::report::PartitionInfo;
use crate::runs::{FailureRecord, RunsError};

/// A run that selects nothing it could ever run, or whose records cannot be read.
#[derive(Debug, Error)]
pub enum SelectError {
    #[error(transparent)]
    Runs(#[from] RunsError),
    #[error("no .lua test files found under {}", show_paths(.paths))]
    NoFiles { paths: Vec<PathBuf> },
    #[error("no test files under {} match {}", show_paths(.paths), filter_flags(.filters))]
    NoMatch {
        paths: Vec<PathBuf>,
        filters: Vec<String>,
    },
}

fn show_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn filter_flags(filters: &[String]) -> String {
    filters
        .iter()
        .map(|f| format!("-f {f}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--partition count:K/N` (the sorted list dealt round-robin) or `hash:K/N` (a stable
/// hash of each relative path, so adding a file moves no other file between shards).
/// K is 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub by_hash: bool,
    pub shard: u32,
    pub shards: u32,
}

impl FromStr for Partition {
    type Err = String;

    fn from_str(input: &str) -> Result<Partition, String> {
        let bad = || {
            format!("invalid partition '{input}': expected count:K/N or hash:K/N with 1 <= K <= N (e.g. count:2/4)")
        };
        let (mode, fraction) = input.split_once(':').ok_or_else(bad)?;
        let by_hash = match mode {
            "count" => false,
            "hash" => true,
            _ => return Err(bad()),
        };
        let (shard, shards) = fraction.split_once('/').ok_or_else(bad)?;
        let shard: u32 = shard.parse().map_err(|_| bad())?;
        let shards: u32 = shards.parse().map_err(|_| bad())?;
        if shard == 0 || shards == 0 || shard > shards {
            return Err(bad());
        }
        Ok(Partition {
            by_hash,
            shard,
            shards,
        })
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.by_hash { "hash" } else { "count" };
        write!(f, "{mode}:{}/{}", self.shard, self.shards)
    }
}

impl Partition {
    /// The files of this shard, in their order. `count` deals the sorted list
    /// round-robin; `hash` keeps a file whose FNV-1a hash of its name falls here.
    pub fn apply(&self, files: Vec<TestFile>) -> Vec<TestFile> {
        let shards = u64::from(self.shards);
        let mine = u64::from(self.shard - 1);
        files
            .into_iter()
            .enumerate()
            .filter(|(i, file)| {
                let slot = if self.by_hash {
                    fnv1a(file.name.as_bytes()) % shards
                } else {
                    *i as u64 % shards
                };
                slot == mine
            })
            .map(|(_, file)| file)
            .collect()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How a run narrows down what it found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filters {
    /// `-f`: a file runs if its relative path contains any of these.
    pub patterns: Vec<String>,
    pub partition: Option<Partition>,
    /// `--rerun-failed`: only what failed when it last ran (same root and shard).
    pub rerun_failed: bool,
}

/// What a run will do with the files it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Files {
        files: Vec<TestFile>,
        partition: Option<PartitionInfo>,
    },
    /// `--rerun-failed` found nothing to rerun; the message says why (not an error).
    NothingToRerun(String),
}

/// The files of `found` (from the `paths` the user gave) that a run with `filters`
/// runs, in sorted order; `runs_parent` holds the failure records. A run selecting
/// nothing is an error — a mistyped filter cannot pass silently — except an empty
/// shard, which passes (a CI matrix must not fail because one shard is empty).
pub fn select(
    found: Vec<TestFile>,
    paths: &[PathBuf],
    filters: &Filters,
    runs_parent: &Path,
) -> Result<Selection, SelectError> {
    if found.is_empty() {
        return Err(SelectError::NoFiles {
            paths: paths.to_vec(),
        });
    }
    let files = discover::filter(found, &filters.patterns);
    if files.is_empty() {
        return Err(SelectError::NoMatch {
            paths: paths.to_vec(),
            filters: filters.patterns.clone(),
        });
    }
    let (mut files, partition) = match filters.partition {
        None => (files, None),
        Some(partition) => {
            let total = files.len();
            let shard = partition.apply(files);
            let info = PartitionInfo {
                spec: partition.to_string(),
                selected: shard.len(),
                total,
            };
            (shard, Some(info))
        }
    };
    if filters.rerun_failed {
        let spec = filters.partition.map(|p| p.to_string());
        let records = records_of(&files, runs_parent, spec.as_deref())?;
        let shown = show_paths(paths);
        if records.values().all(Option::is_none) {
            return Ok(Selection::NothingToRerun(format!(
                "no previous run of {shown} recorded in {}; nothing to rerun",
                runs_parent.display()
            )));
        }
        if records.values().flatten().all(|r| r.failed.is_empty()) {
            return Ok(Selection::NothingToRerun(format!(
                "no failures in the last run of {shown}; nothing to rerun"
            )));
        }
        files.retain(|f| {
            records
                .get(&f.root.key)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.failed.contains(&f.name))
        });
        if files.is_empty() {
            return Ok(Selection::NothingToRerun(format!(
                "the files that failed in the last run of {shown} no longer exist; nothing to rerun"
            )));
        }
    }
    Ok(Selection::Files { files, partition })
}

/// The failure record of each root the files come from.
fn records_of(
    files: &[TestFile],
    runs_parent: &Path,
    partition: Option<&str>,
) -> Result<BTreeMap<PathBuf, Option<FailureRecord>>, RunsError> {
    let mut records = BTreeMap::new();
    for file in files {
        if !records.contains_key(&file.root.key) {
            let record = FailureRecord::load(runs_parent, &file.root.key, partition)?;
            records.insert(file.root.key.clone(), record);
        }
    }
    Ok(records)
}

/// Updates the failure record of every root that had files run: the files that ran
/// and passed leave it, those that ran and failed join it, the others keep their
/// state (a `-f` run does not forget the rest of the root's failures).
pub fn record_results(
    finished: &[(TestFile, bool)],
    partition: Option<&Partition>,
    run_dir: &Path,
    runs_parent: &Path,
) -> Result<(), RunsError> {
    let spec = partition.map(|p| p.to_string());
    let mut by_root: BTreeMap<PathBuf, Vec<(String, bool)>> = BTreeMap::new();
    for (file, failed) in finished {
        by_root
            .entry(file.root.key.clone())
            .or_default()
            .push((file.name.clone(), *failed));
    }
    for (root, results) in by_root {
        let previous = FailureRecord::load(runs_parent, &root, spec.as_deref())?;
        FailureRecord::updated(
            previous,
            root,
            spec.clone(),
            run_dir.to_path_buf(),
            &results,
        )
        .save(runs_parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn found(root: &Path, names: &[&str]) -> Vec<TestFile> {
        names
            .iter()
            .map(|n| TestFile::new(n, root.join(n), root))
            .collect()
    }

    fn names(selection: Selection) -> Vec<String> {
        match selection {
            Selection::Files { files, .. } => files.into_iter().map(|f| f.name).collect(),
            Selection::NothingToRerun(why) => panic!("nothing to rerun: {why}"),
        }
    }

    #[test]
    fn filters_and_reruns_select_from_the_discovery() {
        let runs = tempfile::tempdir().unwrap();
        let root = Path::new("/t");
        let paths = [root.to_path_buf()];
        let all = || found(root, &["a.lua", "b.lua", "c.lua"]);
        let filters = Filters {
            patterns: vec!["b".into(), "c".into()],
            ..Filters::default()
        };
        assert_eq!(
            names(select(all(), &paths, &filters, runs.path()).unwrap()),
            ["b.lua", "c.lua"]
        );
        let rerun = Filters {
            rerun_failed: true,
            ..Filters::default()
        };
        assert!(matches!(
            select(all(), &paths, &rerun, runs.path()).unwrap(),
            Selection::NothingToRerun(why) if why.starts_with("no previous run of /t recorded")
        ));
        FailureRecord::new(
            root.into(),
            "/r".into(),
            vec!["c.lua".into(), "gone.lua".into()],
        )
        .save(runs.path())
        .unwrap();
        assert_eq!(
            names(select(all(), &paths, &rerun, runs.path()).unwrap()),
            ["c.lua"]
        );
        let none = Filters {
            patterns: vec!["zzz".into()],
            ..Filters::default()
        };
        assert_eq!(
            select(all(), &paths, &none, runs.path())
                .unwrap_err()
                .to_string(),
            "no test files under /t match -f zzz"
        );
        assert_eq!(
            select(Vec::new(), &paths, &Filters::default(), runs.path())
                .unwrap_err()
                .to_string(),
            "no .lua test files found under /t"
        );
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_list_in_both_modes() {
        let root = Path::new("/t");
        let names: Vec<String> = (0..23).map(|i| format!("dir{}/t{i}.lua", i % 4)).collect();
        let all: Vec<TestFile> = names
            .iter()
            .map(|n| TestFile::new(n, root.join(n), root))
            .collect();
        for by_hash in [false, true] {
            for shards in 1..=5 {
                let mut seen = BTreeSet::new();
                let mut count = 0;
                for shard in 1..=shards {
                    let partition = Partition {
                        by_hash,
                        shard,
                        shards,
                    };
                    for file in partition.apply(all.clone()) {
                        count += 1;
                        assert!(seen.insert(file.name), "{partition}: a file in two shards");
                    }
                }
                assert_eq!(count, all.len(), "by_hash {by_hash}, {shards} shards");
            }
        }
        // Adding a file moves no other file between hash shards.
        let partition: Partition = "hash:2/3".parse().unwrap();
        let before: Vec<String> = partition
            .apply(all.clone())
            .into_iter()
            .map(|f| f.name)
            .collect();
        let mut more = all.clone();
        more.push(TestFile::new("new.lua", root.join("new.lua"), root));
        let after: Vec<String> = partition
            .apply(more)
            .into_iter()
            .map(|f| f.name)
            .filter(|n| n != "new.lua")
            .collect();
        assert_eq!(before, after);
        assert_eq!(
            "count:2/4".parse::<Partition>().unwrap().to_string(),
            "count:2/4"
        );
        for bad in ["count:0/4", "count:5/4", "count:1", "rand:1/2", "hash:a/b"] {
            assert!(bad.parse::<Partition>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn an_empty_shard_is_selected_not_refused() {
        let runs = tempfile::tempdir().unwrap();
        let root = Path::new("/t");
        let filters = Filters {
            partition: Some("count:3/3".parse().unwrap()),
            ..Filters::default()
        };
        match select(
            found(root, &["a.lua"]),
            &[root.into()],
            &filters,
            runs.path(),
        )
        .unwrap()
        {
            Selection::Files { files, partition } => {
                assert!(files.is_empty());
                let partition = partition.unwrap();
                assert_eq!((partition.selected, partition.total), (0, 1));
            }
            other => panic!("{other:?}"),
        }
    }
}
