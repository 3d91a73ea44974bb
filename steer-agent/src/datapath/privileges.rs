//! The one answer to "may this process run the datapath?", used by the
//! agent's start-up check and by `steer-agent doctor`.
//!
//! Measured on kernel 6.18 (issue #3): CAP_BPF + CAP_NET_ADMIN load, pin and
//! attach every program (connect4/getpeername4/recvmsg4, sock_ops, TC, the
//! sk_msg SockHash); either alone fails with EPERM at map creation; neither
//! CAP_SYS_ADMIN nor CAP_PERFMON is needed. Kernels before 5.8 have no
//! CAP_BPF and would need CAP_SYS_ADMIN instead (not supported here). Being
//! uid 0 proves nothing: the DaemonSet runs as uid 0 with every other
//! capability dropped.

use steer_host::{CAP_BPF, CAP_NET_ADMIN, Capability};

/// What the datapath needs, exactly.
pub const REQUIRED: [Capability; 2] = [CAP_BPF, CAP_NET_ADMIN];

/// The required capabilities this process lacks (empty: the datapath may start).
pub fn missing() -> Vec<&'static str> {
    missing_from(steer_host::effective_capabilities())
}

pub fn missing_from(effective: u64) -> Vec<&'static str> {
    steer_host::missing(effective, &REQUIRED)
        .into_iter()
        .map(|c| c.name)
        .collect()
}

/// "CAP_BPF + CAP_NET_ADMIN".
pub fn required_text() -> String {
    REQUIRED.map(|c| c.name).join(" + ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn exactly_bpf_and_net_admin() {
        let bpf_net_admin = (1u64 << 39) | (1 << 12);
        assert!(super::missing_from(bpf_net_admin).is_empty());
        assert_eq!(super::missing_from(1 << 39), ["CAP_NET_ADMIN"]);
        assert_eq!(super::missing_from(0), ["CAP_BPF", "CAP_NET_ADMIN"]);
        assert_eq!(super::required_text(), "CAP_BPF + CAP_NET_ADMIN");
    }
}
