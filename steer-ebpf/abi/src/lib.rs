//! The one place where kernel and agent agree on map layouts.
//!
//! Every struct here is `#[repr(C)]`, padded explicitly and `Copy`, so the
//! eBPF programs (issue #3) and the agent read the same bytes. Addresses and
//! ports are stored in network byte order, exactly as the kernel hands them to
//! socket programs, so the hot kernel path never swaps bytes.
#![no_std]

/// Directory under bpffs where Steer pins its maps and links.
pub const PIN_DIR: &str = "/sys/fs/bpf/steer";

/// Most backends one model VIP can fan out to.
pub const MAX_BACKENDS: usize = 32;
/// Most VIPs (model virtual addresses) per node.
pub const MAX_VIPS: u32 = 1024;
/// Most pods tracked for kernel latency and traffic counters.
pub const MAX_PODS: u32 = 4096;

pub const MAP_VIPS: &str = "STEER_VIPS";
pub const MAP_POD_LATENCY: &str = "STEER_POD_LAT";
pub const MAP_POD_TRAFFIC: &str = "STEER_POD_TRAFFIC";

/// An IPv4 socket address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr4 {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

/// A model's backend table and the agent's current choice.
///
/// Written whole by the agent in one map update, so the kernel never sees a
/// half-written table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipBackends {
    /// Number of valid entries in `backends`.
    pub count: u32,
    /// Index into `backends` of the pod the agent chose last.
    pub chosen: u32,
    /// Monotonic version, bumped on every write.
    pub generation: u64,
    pub backends: [Addr4; MAX_BACKENDS],
}

impl Default for VipBackends {
    fn default() -> Self {
        Self {
            count: 0,
            chosen: 0,
            generation: 0,
            backends: [Addr4::default(); MAX_BACKENDS],
        }
    }
}

/// Kernel-measured latency of one pod (filled by `sock_ops`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodLatency {
    /// Smoothed RTT in microseconds (the kernel's srtt_us >> 3).
    pub srtt_us: u32,
    pub _pad: u32,
    pub samples: u64,
    pub last_update_ns: u64,
    pub connects: u64,
    pub failed_connects: u64,
}

/// Bytes and packets seen by TC for one pod, both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Addr4>(), 8);
        assert_eq!(size_of::<VipBackends>(), 16 + 8 * MAX_BACKENDS);
        assert_eq!(size_of::<PodLatency>(), 40);
        assert_eq!(size_of::<PodTraffic>(), 32);
        assert_eq!(align_of::<VipBackends>(), 8);
    }
}
