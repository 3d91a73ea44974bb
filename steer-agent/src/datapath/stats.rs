//! What the kernel measured, read from the per-CPU maps and merged.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use steer_ebpf_abi::{COUNTER_NAMES, PodLatency, PodTraffic};

use super::tables::{Tables, from_addr4};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PodKernelStats {
    /// Smoothed RTT of the most recent sample, microseconds; 0 = none yet.
    pub srtt_us: u32,
    pub rtt_samples: u64,
    pub last_update_ns: u64,
    pub connects: u64,
    pub failed_connects: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KernelStats {
    pub pods: BTreeMap<SocketAddrV4, PodKernelStats>,
    /// Counter name → total over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
}

impl KernelStats {
    pub fn read(tables: &Tables) -> Self {
        let mut stats = Self::default();
        for entry in tables.latency.iter().flatten() {
            let (key, per_cpu) = entry;
            let merged = merge_latency(per_cpu.iter());
            let pod = stats.pods.entry(from_addr4(key)).or_default();
            pod.srtt_us = merged.srtt_us;
            pod.rtt_samples = merged.samples;
            pod.last_update_ns = merged.last_update_ns;
            pod.connects = merged.connects;
            pod.failed_connects = merged.failed_connects;
        }
        let mut traffic_by_ip = BTreeMap::new();
        for (ip, per_cpu) in tables.traffic.iter().flatten() {
            traffic_by_ip.insert(ip, merge_traffic(per_cpu.iter()));
        }
        // TC counts per IP (packets carry no pod identity beyond it): every
        // pod (ip:port) of that IP shows the IP's totals, said so in
        // `steer-agent maps` and the metrics' help.
        for pod in tables.pods.keys().flatten() {
            let entry = stats.pods.entry(from_addr4(pod)).or_default();
            if let Some(t) = traffic_by_ip.get(&pod.ip) {
                entry.tx_bytes = t.tx_bytes;
                entry.tx_packets = t.tx_packets;
                entry.rx_bytes = t.rx_bytes;
                entry.rx_packets = t.rx_packets;
            }
        }
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            let total = tables
                .counters
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            stats.counters.insert(name, total);
        }
        stats
    }
}

/// Sums the counts; srtt comes from the CPU that sampled last.
pub fn merge_latency<'a>(per_cpu: impl Iterator<Item = &'a PodLatency>) -> PodLatency {
    let mut out = PodLatency::default();
    for v in per_cpu {
        out.samples += v.samples;
        out.connects += v.connects;
        out.failed_connects += v.failed_connects;
        if v.samples > 0 && v.last_update_ns >= out.last_update_ns {
            out.last_update_ns = v.last_update_ns;
            out.srtt_us = v.srtt_us;
        }
    }
    out
}

pub fn merge_traffic<'a>(per_cpu: impl Iterator<Item = &'a PodTraffic>) -> PodTraffic {
    per_cpu.fold(PodTraffic::default(), |mut acc, v| {
        acc.tx_bytes += v.tx_bytes;
        acc.tx_packets += v.tx_packets;
        acc.rx_bytes += v.rx_bytes;
        acc.rx_packets += v.rx_packets;
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_merge_takes_the_newest_srtt_and_sums_counts() {
        let cpus = [
            PodLatency {
                srtt_us: 100,
                samples: 3,
                last_update_ns: 50,
                connects: 1,
                ..Default::default()
            },
            PodLatency {
                srtt_us: 900,
                samples: 1,
                last_update_ns: 70,
                failed_connects: 2,
                ..Default::default()
            },
            PodLatency::default(),
        ];
        let m = merge_latency(cpus.iter());
        assert_eq!(
            (m.srtt_us, m.samples, m.connects, m.failed_connects),
            (900, 4, 1, 2)
        );
        let t = merge_traffic(
            [
                PodTraffic {
                    tx_bytes: 5,
                    ..Default::default()
                },
                PodTraffic {
                    tx_bytes: 7,
                    rx_packets: 1,
                    ..Default::default()
                },
            ]
            .iter(),
        );
        assert_eq!((t.tx_bytes, t.rx_packets), (12, 1));
    }
}
