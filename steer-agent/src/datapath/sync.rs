//! Background tasks between the routing snapshot and the kernel maps:
//! VIP tables follow pool changes at once and decisions within
//! [`VIP_PERIOD`] (the chosen pod is read from the pools, off the request
//! path), pod tables follow the pools, and kernel latency flows back into
//! pod state for routing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use steer_ebpf_abi::{MAX_BACKENDS, POD_NODE_LOCAL, VipBackends};

use super::KernelDatapath;
use super::stats::KernelStats;
use super::tables::addr4;
use crate::pool::{ModelPool, Pools, Snapshot};

/// How often kernel stats are read back even without changes.
const STATS_PERIOD: Duration = Duration::from_millis(200);
/// Upper bound between VIP table checks: how late the kernel follows a
/// decision or a pod readiness flip (a check that finds nothing new writes nothing).
const VIP_PERIOD: Duration = Duration::from_millis(50);

pub fn spawn(kernel: Arc<KernelDatapath>, pools: Arc<Pools>) {
    tokio::spawn(vip_writer(kernel.clone(), pools.clone()));
    tokio::spawn(stats_reader(kernel, pools));
}

/// The backends and choice last written per VIP, to skip identical writes.
type Written = HashMap<SocketAddrV4, ([SocketAddrV4; MAX_BACKENDS], u32, u32)>;

async fn vip_writer(kernel: Arc<KernelDatapath>, pools: Arc<Pools>) {
    let mut written: Written = HashMap::new();
    let mut pods_generation = 0;
    let mut generation = 0u64;
    let mut changes = pools.subscribe();
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(VIP_PERIOD) => {}
        }
        let snapshot = pools.snapshot();
        let mut tables = kernel.tables.lock();
        if snapshot.generation != pods_generation {
            match tables.sync_pods(&pod_list(&snapshot)) {
                Ok(()) => pods_generation = snapshot.generation,
                Err(error) => tracing::warn!(%error, "writing pod tables failed"),
            }
        }
        let mut live = Vec::new();
        for pool in snapshot.models.values() {
            let Some(vip) = pool.vip else { continue };
            live.push(vip);
            let (table, chosen, count) = vip_table(pool);
            if written.get(&vip) == Some(&(table, chosen, count)) {
                continue;
            }
            generation += 1;
            let mut value = VipBackends {
                count,
                chosen,
                generation,
                ..Default::default()
            };
            for (slot, addr) in value.backends.iter_mut().zip(&table[..count as usize]) {
                *slot = addr4(*addr);
            }
            match tables.write_vip(vip, &value) {
                Ok(()) => {
                    written.insert(vip, (table, chosen, count));
                }
                Err(error) => tracing::warn!(%vip, %error, "writing VIP table failed"),
            }
        }
        let gone: Vec<SocketAddrV4> = written
            .keys()
            .filter(|v| !live.contains(v))
            .copied()
            .collect();
        for vip in gone {
            if tables.remove_vip(vip).is_ok() {
                written.remove(&vip);
            }
        }
    }
}

/// Ready IPv4 backends of a model and the index of the agent's last choice
/// (or of the least-loaded backend when that choice is gone).
fn vip_table(pool: &ModelPool) -> ([SocketAddrV4; MAX_BACKENDS], u32, u32) {
    let mut table = [SocketAddrV4::new(0.into(), 0); MAX_BACKENDS];
    let mut count = 0;
    let wanted = pool.vip_choice.load(Ordering::Relaxed);
    let mut chosen = None;
    let mut least = (u32::MAX, 0);
    for member in pool.members.iter().filter(|m| m.endpoint.is_ready()) {
        let SocketAddr::V4(addr) = member.endpoint.addr else {
            continue;
        };
        if count == MAX_BACKENDS {
            break;
        }
        table[count] = addr;
        if member.endpoint.id == wanted {
            chosen = Some(count as u32);
        }
        let load = member.endpoint.view().load();
        if load < least.0 {
            least = (load, count as u32);
        }
        count += 1;
    }
    (table, chosen.unwrap_or(least.1), count as u32)
}

pub(super) fn pod_list(snapshot: &Snapshot) -> Vec<(SocketAddr, u32)> {
    snapshot
        .endpoints
        .iter()
        .map(|e| {
            let local =
                snapshot.settings.node_local.contains(&e.addr) || is_node_local(e.addr.ip());
            (e.addr, if local { POD_NODE_LOCAL } else { 0 })
        })
        .collect()
}

/// Loopback and this node's own addresses are node-local (sk_msg candidates).
fn is_node_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

async fn stats_reader(kernel: Arc<KernelDatapath>, pools: Arc<Pools>) {
    let mut ticker = tokio::time::interval(STATS_PERIOD);
    loop {
        ticker.tick().await;
        let stats = {
            let tables = kernel.tables.lock();
            KernelStats::read(&tables)
        };
        let snapshot = pools.snapshot();
        for endpoint in &snapshot.endpoints {
            let SocketAddr::V4(addr) = endpoint.addr else {
                continue;
            };
            if let Some(pod) = stats.pods.get(&addr).filter(|p| p.rtt_samples > 0) {
                endpoint.set_kernel_srtt_us(pod.srtt_us);
            }
        }
        kernel.stats.store(Arc::new(stats));
    }
}
