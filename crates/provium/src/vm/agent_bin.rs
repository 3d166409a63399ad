//! The guest agent binary, built static by `build.rs` and embedded in the host.

/// The static x86_64 `provium-agent` executable, placed in every shim.
pub const AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/provium-agent"));

#[cfg(test)]
mod tests {
    use super::AGENT;

    fn u16_at(off: usize) -> u16 {
        u16::from_le_bytes([AGENT[off], AGENT[off + 1]])
    }

    fn u64_at(off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&AGENT[off..off + 8]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn agent_is_a_static_x86_64_elf() {
        assert_eq!(&AGENT[..4], b"\x7fELF", "not an ELF file");
        assert_eq!(AGENT[4], 2, "not 64-bit");
        assert_eq!(u16_at(18), 62, "not x86_64");
        let phoff = u64_at(32) as usize;
        let phentsize = usize::from(u16_at(54));
        let phnum = usize::from(u16_at(56));
        // A static-pie binary keeps a PT_DYNAMIC for self-relocation; only a
        // PT_INTERP means it needs a loader (and libraries) in the guest.
        const PT_INTERP: u32 = 3;
        for i in 0..phnum {
            let off = phoff + i * phentsize;
            let kind =
                u32::from_le_bytes([AGENT[off], AGENT[off + 1], AGENT[off + 2], AGENT[off + 3]]);
            assert_ne!(kind, PT_INTERP, "the agent needs a dynamic loader");
        }
    }

    #[test]
    fn agent_stays_small() {
        assert!(AGENT.len() < 4 << 20, "agent is {} bytes", AGENT.len());
    }
}
