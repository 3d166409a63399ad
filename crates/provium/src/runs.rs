//! Run directories, per-file logs and the failed-file record for `--rerun-failed`.
