//! Typed handles on the maps the agent writes and reads.

use std::collections::HashMap as StdHashMap;
use std::net::{SocketAddr, SocketAddrV4};

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, SockHash};
use aya::programs::SkMsg;
use steer_ebpf_abi::{self as abi, Addr4, Config, PodLatency, PodTraffic, SockKey, VipBackends};

use super::DatapathError;

pub struct Tables {
    pub vips: HashMap<MapData, Addr4, VipBackends>,
    pub pods: HashMap<MapData, Addr4, u32>,
    pub pod_ips: HashMap<MapData, u32, u32>,
    pub latency: PerCpuHashMap<MapData, Addr4, PodLatency>,
    pub traffic: PerCpuHashMap<MapData, u32, PodTraffic>,
    pub counters: PerCpuArray<MapData, u64>,
    config: Array<MapData, Config>,
    socks: Option<SockHash<MapData, SockKey>>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables").finish_non_exhaustive()
    }
}

impl Tables {
    pub fn take(ebpf: &mut Ebpf, sk_msg: bool) -> Result<Self, DatapathError> {
        let mut config: Array<MapData, Config> = take(ebpf, abi::MAP_CONFIG)?;
        let value = Config {
            sk_msg_enabled: u32::from(sk_msg),
            _pad: 0,
        };
        config
            .set(0, value, 0)
            .map_err(|e| map_err(abi::MAP_CONFIG, e))?;
        Ok(Self {
            vips: take(ebpf, abi::MAP_VIPS)?,
            pods: take(ebpf, abi::MAP_PODS)?,
            pod_ips: take(ebpf, abi::MAP_POD_IPS)?,
            latency: take(ebpf, abi::MAP_POD_LAT)?,
            traffic: take(ebpf, abi::MAP_TRAFFIC)?,
            counters: take(ebpf, abi::MAP_COUNTERS)?,
            config,
            socks: Some(take(ebpf, abi::MAP_SOCKS)?),
        })
    }

    pub fn attach_sk_msg(&self, ebpf: &mut Ebpf) -> Result<(), DatapathError> {
        let Some(socks) = &self.socks else {
            return Ok(());
        };
        let prog: &mut SkMsg = ebpf
            .program_mut(abi::PROG_SK_MSG)
            .ok_or_else(|| DatapathError::missing_program(abi::PROG_SK_MSG))?
            .try_into()
            .map_err(|e| DatapathError::load(abi::PROG_SK_MSG, e))?;
        prog.load()
            .map_err(|e| DatapathError::load(abi::PROG_SK_MSG, e))?;
        let fd = socks
            .fd()
            .try_clone()
            .map_err(|e| map_err(abi::MAP_SOCKS, e))?;
        prog.attach(&fd)
            .map_err(|e| DatapathError::attach(abi::PROG_SK_MSG, e))?;
        Ok(())
    }

    pub fn sk_msg_enabled(&self) -> bool {
        self.config.get(&0, 0).is_ok_and(|c| c.sk_msg_enabled != 0)
    }

    /// Replaces a VIP's whole table in one map update.
    pub fn write_vip(
        &mut self,
        vip: SocketAddrV4,
        value: &VipBackends,
    ) -> Result<(), DatapathError> {
        self.vips
            .insert(addr4(vip), value, 0)
            .map_err(|e| map_err(abi::MAP_VIPS, e))
    }

    pub fn remove_vip(&mut self, vip: SocketAddrV4) -> Result<(), DatapathError> {
        match self.vips.remove(&addr4(vip)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(abi::MAP_VIPS, e)),
        }
    }

    /// Makes the pod set exactly `pods` (IPv4 only): known to sock_ops and TC.
    pub fn sync_pods(&mut self, pods: &[(SocketAddr, u32)]) -> Result<(), DatapathError> {
        let want: StdHashMap<Addr4, u32> = pods
            .iter()
            .filter_map(|(a, flags)| match a {
                SocketAddr::V4(v4) => Some((addr4(*v4), *flags)),
                SocketAddr::V6(_) => None,
            })
            .collect();
        let stale: Vec<Addr4> = self
            .pods
            .keys()
            .flatten()
            .filter(|k| !want.contains_key(k))
            .collect();
        for key in stale {
            let _ = self.pods.remove(&key);
            let _ = self.latency.remove(&key);
        }
        for (key, flags) in &want {
            self.pods
                .insert(key, flags, 0)
                .map_err(|e| map_err(abi::MAP_PODS, e))?;
        }
        let want_ips: StdHashMap<u32, u32> = want.iter().map(|(k, f)| (k.ip, *f)).collect();
        let stale_ips: Vec<u32> = self
            .pod_ips
            .keys()
            .flatten()
            .filter(|k| !want_ips.contains_key(k))
            .collect();
        for ip in stale_ips {
            let _ = self.pod_ips.remove(&ip);
            let _ = self.traffic.remove(&ip);
        }
        for (ip, flags) in &want_ips {
            self.pod_ips
                .insert(ip, flags, 0)
                .map_err(|e| map_err(abi::MAP_POD_IPS, e))?;
        }
        Ok(())
    }
}

pub fn addr4(a: SocketAddrV4) -> Addr4 {
    Addr4 {
        ip: u32::from(*a.ip()).to_be(),
        port: a.port().to_be(),
        _pad: 0,
    }
}

pub fn from_addr4(a: Addr4) -> SocketAddrV4 {
    SocketAddrV4::new(u32::from_be(a.ip).into(), u16::from_be(a.port))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| DatapathError::Map {
        map: name,
        context: ": missing from the object".into(),
        source: None,
    })?;
    T::try_from(map).map_err(|e| map_err(name, e))
}

fn map_err(map: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> DatapathError {
    DatapathError::map(map, String::new(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr4_is_network_order_and_round_trips() {
        let a: SocketAddrV4 = "10.1.2.3:8000".parse().unwrap();
        let k = addr4(a);
        assert_eq!(k.ip.to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(k.port.to_ne_bytes(), 8000u16.to_be_bytes());
        assert_eq!(from_addr4(k), a);
    }
}
