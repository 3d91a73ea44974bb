//! The one place where kernel and agent agree on map layouts.
//!
//! Every struct here is `#[repr(C)]`, padded explicitly and `Copy`, so the
//! eBPF programs and the agent read the same bytes. Addresses and ports are
//! stored in network byte order, exactly as the kernel hands them to socket
//! programs, so the kernel path never swaps bytes. With the `user` feature
//! (the agent) every type implements `aya::Pod`.
#![no_std]

/// Directory under bpffs where Steer pins its maps and links.
pub const PIN_DIR: &str = "/sys/fs/bpf/steer";

/// Most backends one model VIP can fan out to.
pub const MAX_BACKENDS: usize = 32;
/// Most VIPs (model virtual addresses) per node.
pub const MAX_VIPS: u32 = 1024;
/// Most pods tracked for kernel latency and traffic counters.
pub const MAX_PODS: u32 = 4096;
/// Reverse-NAT entries (one per steered socket); LRU-evicted.
pub const MAX_REVNAT: u32 = 65536;
/// Node-local sockets eligible for sk_msg redirection.
pub const MAX_SOCKS: u32 = 65536;

// Map names double as pin file names: at most 15 bytes, no '.' (bpffs).
/// `HashMap<Addr4 (VIP), VipBackends>`: written by the agent.
pub const MAP_VIPS: &str = "STEER_VIPS";
/// `LruHashMap<u64 (socket cookie), Addr4 (VIP)>`: written by connect4,
/// read by getpeername4/recvmsg4 so applications still see the VIP.
pub const MAP_REVNAT: &str = "STEER_REVNAT";
/// `HashMap<Addr4 (pod ip:port), u32 (PodFlags)>`: pods the kernel measures.
pub const MAP_PODS: &str = "STEER_PODS";
/// `PerCpuHashMap<Addr4, PodLatency>`: filled by sock_ops.
pub const MAP_POD_LAT: &str = "STEER_POD_LAT";
/// `HashMap<u32 (pod IPv4), u32 (PodFlags)>`: pods TC counts.
pub const MAP_POD_IPS: &str = "STEER_POD_IPS";
/// `PerCpuHashMap<u32 (pod IPv4), PodTraffic>`: filled by TC.
pub const MAP_TRAFFIC: &str = "STEER_TRAFFIC";
/// `PerCpuArray<u64>` indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "STEER_COUNTERS";
/// `SockHash<SockKey>`: node-local sockets for sk_msg redirection.
pub const MAP_SOCKS: &str = "STEER_SOCKS";
/// `Array<Config>` with one entry: runtime switches.
pub const MAP_CONFIG: &str = "STEER_CONFIG";

/// Every map, for pinning, listing and cleanup.
pub const ALL_MAPS: [&str; 9] = [
    MAP_VIPS,
    MAP_REVNAT,
    MAP_PODS,
    MAP_POD_LAT,
    MAP_POD_IPS,
    MAP_TRAFFIC,
    MAP_COUNTERS,
    MAP_SOCKS,
    MAP_CONFIG,
];

// Program (function) names in the object.
pub const PROG_CONNECT4: &str = "steer_connect4";
pub const PROG_GETPEERNAME4: &str = "steer_getpeername4";
pub const PROG_RECVMSG4: &str = "steer_recvmsg4";
pub const PROG_SOCKOPS: &str = "steer_sockops";
pub const PROG_TC_INGRESS: &str = "steer_tc_ingress";
pub const PROG_TC_EGRESS: &str = "steer_tc_egress";
pub const PROG_SK_MSG: &str = "steer_sk_msg";

/// Per-CPU counters, index into [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect() to a VIP rewritten to a backend.
    ConnectRewrite = 0,
    /// connect() to a VIP with no backend: refused (EHOSTUNREACH).
    ConnectNoBackend = 1,
    /// getpeername()/recvmsg() answered with the VIP.
    RevNatHit = 2,
    /// An established TCP connection to a known pod.
    PodEstablished = 3,
    /// An RTT sample taken for a known pod.
    RttSample = 4,
    /// sk_msg sends redirected socket to socket.
    SkMsgRedirect = 5,
    /// sk_msg sends passed to the stack (peer not in the map).
    SkMsgPass = 6,
}

pub const COUNTERS_LEN: u32 = 7;
pub const COUNTER_NAMES: [&str; COUNTERS_LEN as usize] = [
    "connect_rewrite",
    "connect_no_backend",
    "revnat_hit",
    "pod_established",
    "rtt_sample",
    "sk_msg_redirect",
    "sk_msg_pass",
];

/// Flags in [`MAP_PODS`] / [`MAP_POD_IPS`] values.
pub const POD_NODE_LOCAL: u32 = 1;

/// An IPv4 socket address in network byte order (`port` as the kernel's
/// `user_port` / `remote_port >> 16`: the network-order u16).
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
    /// Number of valid entries in `backends`; 0 means "no ready backend":
    /// connects are refused rather than leaking the VIP onto the network.
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

/// Kernel-measured latency of one pod, per CPU (filled by `sock_ops`). The
/// agent sums the counts and takes `srtt_us` from the CPU that updated last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodLatency {
    /// Smoothed RTT in microseconds (the kernel's `srtt_us >> 3`).
    pub srtt_us: u32,
    pub _pad: u32,
    pub samples: u64,
    /// `bpf_ktime_get_ns()` of the last sample.
    pub last_update_ns: u64,
    pub connects: u64,
    pub failed_connects: u64,
}

/// Bytes and packets seen by TC for one pod. `tx` = node → pod, `rx` = pod → node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

/// A socket's 4-tuple, network byte order ports in the low 16 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub local_ip: u32,
    pub remote_ip: u32,
    pub local_port: u32,
    pub remote_port: u32,
}

/// Runtime switches, entry 0 of [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Non-zero: sock_ops inserts node-local sockets into [`MAP_SOCKS`].
    pub sk_msg_enabled: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], Copy, made only of integers, with
    // explicit padding fields: every bit pattern is valid.
    unsafe impl aya::Pod for Addr4 {}
    unsafe impl aya::Pod for VipBackends {}
    unsafe impl aya::Pod for PodLatency {}
    unsafe impl aya::Pod for PodTraffic {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for Config {}
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
        assert_eq!(size_of::<SockKey>(), 16);
        assert_eq!(size_of::<Config>(), 8);
        assert_eq!(align_of::<VipBackends>(), 8);
    }

    #[test]
    fn names_fit_the_kernel_and_bpffs() {
        for name in ALL_MAPS {
            assert!(name.len() <= 15 && !name.contains('.'), "{name}");
        }
        assert_eq!(COUNTER_NAMES.len(), COUNTERS_LEN as usize);
        assert_eq!(Counter::SkMsgPass as u32 + 1, COUNTERS_LEN);
    }
}
