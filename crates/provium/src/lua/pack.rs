//! `provium.pack` / `provium.unpack`: little-endian binary structs.
