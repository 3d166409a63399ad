//! The VM resource pool: memory/CPU gating for VM boots.
