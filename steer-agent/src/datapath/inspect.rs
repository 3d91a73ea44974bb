//! `steer-agent maps`: the pinned tables as a readable table or JSON.

use std::net::SocketAddrV4;
use std::path::Path;

use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use serde::Serialize;
use steer_ebpf_abi::{self as abi, Addr4, COUNTER_NAMES, PodLatency, PodTraffic, VipBackends};

use super::DatapathError;
use super::stats::{PodKernelStats, merge_latency, merge_traffic};
use super::tables::from_addr4;

#[derive(Debug, Serialize)]
pub struct VipRow {
    pub vip: SocketAddrV4,
    pub backends: Vec<SocketAddrV4>,
    pub chosen: Option<SocketAddrV4>,
    pub generation: u64,
}

#[derive(Debug, Serialize)]
pub struct PodRow {
    pub pod: SocketAddrV4,
    #[serde(flatten)]
    pub stats: PodKernelStats,
}

#[derive(Debug, Serialize)]
pub struct Dump {
    pub pin_dir: String,
    pub vips: Vec<VipRow>,
    pub pods: Vec<PodRow>,
    pub counters: Vec<(&'static str, u64)>,
}

fn open(pin_dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        DatapathError::map(
            name,
            format!(
                " at {} (is the agent running with the eBPF datapath?)",
                path.display()
            ),
            e,
        )
    })?;
    Map::from_map_data(data).map_err(|e| DatapathError::map(name, String::new(), e))
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, DatapathError> {
    T::try_from(open(pin_dir, name)?).map_err(|e| DatapathError::map(name, String::new(), e))
}

pub fn dump(pin_dir: &Path) -> Result<Dump, DatapathError> {
    let vips: HashMap<MapData, Addr4, VipBackends> = typed(pin_dir, abi::MAP_VIPS)?;
    let pods: HashMap<MapData, Addr4, u32> = typed(pin_dir, abi::MAP_PODS)?;
    let latency: PerCpuHashMap<MapData, Addr4, PodLatency> = typed(pin_dir, abi::MAP_POD_LAT)?;
    let traffic: PerCpuHashMap<MapData, u32, PodTraffic> = typed(pin_dir, abi::MAP_TRAFFIC)?;
    let counters: PerCpuArray<MapData, u64> = typed(pin_dir, abi::MAP_COUNTERS)?;

    let mut vip_rows: Vec<VipRow> = vips
        .iter()
        .flatten()
        .map(|(vip, table)| {
            let count = (table.count as usize).min(abi::MAX_BACKENDS);
            let backends: Vec<SocketAddrV4> = table.backends[..count]
                .iter()
                .map(|a| from_addr4(*a))
                .collect();
            let chosen = (count > 0).then(|| backends[table.chosen as usize % count]);
            VipRow {
                vip: from_addr4(vip),
                backends,
                chosen,
                generation: table.generation,
            }
        })
        .collect();
    vip_rows.sort_by_key(|r| r.vip);

    let mut pod_rows = Vec::new();
    for key in pods.keys().flatten() {
        let lat = latency
            .get(&key, 0)
            .map(|v| merge_latency(v.iter()))
            .unwrap_or_default();
        let tr = traffic
            .get(&key.ip, 0)
            .map(|v| merge_traffic(v.iter()))
            .unwrap_or_default();
        pod_rows.push(PodRow {
            pod: from_addr4(key),
            stats: PodKernelStats {
                srtt_us: lat.srtt_us,
                rtt_samples: lat.samples,
                last_update_ns: lat.last_update_ns,
                connects: lat.connects,
                failed_connects: lat.failed_connects,
                tx_bytes: tr.tx_bytes,
                tx_packets: tr.tx_packets,
                rx_bytes: tr.rx_bytes,
                rx_packets: tr.rx_packets,
            },
        });
    }
    pod_rows.sort_by_key(|r| r.pod);
    let counters = COUNTER_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                *name,
                counters
                    .get(&(i as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0),
            )
        })
        .collect();
    Ok(Dump {
        pin_dir: pin_dir.display().to_string(),
        vips: vip_rows,
        pods: pod_rows,
        counters,
    })
}

impl Dump {
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = format!("Steer eBPF maps pinned under {}\n\nVIPs\n", self.pin_dir);
        let _ = writeln!(
            out,
            "  {:<22} {:<22} {:>10}  backends",
            "vip", "chosen", "generation"
        );
        if self.vips.is_empty() {
            out.push_str("  (none: add `vip:` to a model in the config)\n");
        }
        for v in &self.vips {
            let chosen = v.chosen.map_or("- (refuses)".to_owned(), |c| c.to_string());
            let list: Vec<String> = v.backends.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  {:<22} {:<22} {:>10}  {}",
                v.vip.to_string(),
                chosen,
                v.generation,
                list.join(", ")
            );
        }
        out.push_str("\nPods (kernel-measured)\n");
        let _ = writeln!(
            out,
            "  {:<22} {:>9} {:>9} {:>9} {:>7} {:>12} {:>12}",
            "pod", "srtt_us", "samples", "connects", "failed", "ip_tx_bytes", "ip_rx_bytes"
        );
        for p in &self.pods {
            let _ = writeln!(
                out,
                "  {:<22} {:>9} {:>9} {:>9} {:>7} {:>12} {:>12}",
                p.pod.to_string(),
                p.stats.srtt_us,
                p.stats.rtt_samples,
                p.stats.connects,
                p.stats.failed_connects,
                p.stats.tx_bytes,
                p.stats.rx_bytes
            );
        }
        out.push_str(
            "  (TC counts bytes per pod IP: pods sharing an IP, e.g. hostNetwork or loopback pods, show the same totals)\n",
        );
        out.push_str("\nCounters\n");
        for (name, value) in &self.counters {
            let _ = writeln!(out, "  {name:<20} {value}");
        }
        let _ = write!(
            out,
            "\nRaw view: bpftool map dump pinned {}/{}\n",
            self.pin_dir,
            abi::MAP_VIPS
        );
        out
    }
}
