//! Acceleration choice: KVM only after proving it runs a guest, otherwise TCG.
