//! Command-line interface: argument parsing, exit codes.

pub fn main() -> i32 {
    0
}
