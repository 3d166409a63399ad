//! `provium.toml` loading and profile resolution.
