//! The `provium` binary: a thin shell over the library.

fn main() {
    std::process::exit(provium::cli::main());
}
