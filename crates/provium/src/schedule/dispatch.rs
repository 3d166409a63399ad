//! File dispatch: runs test files on worker threads.
