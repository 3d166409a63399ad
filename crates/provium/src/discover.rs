//! Test-file discovery under a test root.
