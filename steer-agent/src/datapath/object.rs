//! The eBPF object (`steer-ebpf`) embedded at build time by `build.rs`.

/// The ELF object with every Steer eBPF program and map. Empty when the
/// agent was built without eBPF (no bpf-linker at build time): the agent
/// then runs header-only.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("STEER_EBPF_OBJECT"))
}
