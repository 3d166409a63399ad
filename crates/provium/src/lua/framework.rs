//! Globals: `test`, `todo`, `assert`, `assert_eq`, `assert_contains`.
