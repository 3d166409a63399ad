//! The VM resource pool: memory/CPU gating for VM boots.

use thiserror::Error;

/// How VM boots are gated (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// Gate each boot on `/proc/meminfo` MemAvailable minus memory promised to VMs
    /// still booting, keeping a host reserve.
    Auto,
    /// A fixed budget from `--mem` / `--cpus`; `None` means that dimension is unlimited.
    Fixed {
        memory_mib: Option<u64>,
        cpus: Option<u32>,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid size '{input}': expected a number of MiB or a number with an M or G suffix (e.g. 512M, 4G)")]
pub struct SizeError {
    pub input: String,
}

/// Parses `512M`, `4G`, `2048` (bare = MiB) into MiB.
pub fn parse_size_mib(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError {
        input: input.to_string(),
    };
    let trimmed = input.trim();
    let (digits, multiplier) = match trimmed.char_indices().last() {
        Some((i, 'M' | 'm')) => (&trimmed[..i], 1),
        Some((i, 'G' | 'g')) => (&trimmed[..i], 1024),
        _ => (trimmed, 1),
    };
    let value: u64 = digits.parse().map_err(|_| err())?;
    if value == 0 {
        return Err(err());
    }
    value.checked_mul(multiplier).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_suffix() {
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("4G"), Ok(4096));
        assert_eq!(parse_size_mib("2048"), Ok(2048));
        assert_eq!(parse_size_mib("1g"), Ok(1024));
        assert!(parse_size_mib("").is_err());
        assert!(parse_size_mib("0").is_err());
        assert!(parse_size_mib("4T").is_err());
        assert!(parse_size_mib("-1G").is_err());
    }
}
