//! Loading, attaching and pinning the programs; restart-safe.
//!
//! Maps are pinned by name under the pin directory and reused when present,
//! so a restart keeps every VIP and pod entry. Links are pinned under
//! `links/`: a restarting agent attaches its new programs first and only
//! then retires the pinned links of the previous run, so the node is never
//! without steering.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{
    NlOptions, SchedClassifier, TcAttachOptions, TcAttachType, qdisc_add_clsact,
};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, LinkOrder, SockOps};
use aya::{Ebpf, EbpfLoader};
use parking_lot::Mutex;
use steer_ebpf_abi as abi;

use super::stats::KernelStats;
use super::tables::Tables;
use super::{DatapathError, object, privileges};
use crate::config::DatapathSettings;

#[derive(Debug)]
pub struct KernelDatapath {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    pub(super) tables: Mutex<Tables>,
    pub(super) stats: ArcSwap<KernelStats>,
    /// Keeps the loaded programs (and non-pinnable links) alive.
    _ebpf: Mutex<Ebpf>,
}

impl KernelDatapath {
    pub fn start(settings: &DatapathSettings) -> Result<Self, DatapathError> {
        let bytes = object::object();
        if bytes.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let missing = privileges::missing();
        if !missing.is_empty() {
            return Err(DatapathError::Permission(format!(
                "missing {}",
                missing.join(", ")
            )));
        }
        let pin_dir = settings.pin_dir.clone();
        prepare_pin_dir(&pin_dir)?;
        let cgroup_path = match &settings.cgroup {
            Some(path) => path.clone(),
            None => steer_host::cgroup2_root().ok_or_else(|| {
                DatapathError::Cgroup("no cgroup2 mount in /proc/self/mountinfo".into())
            })?,
        };
        let cgroup_file = File::open(&cgroup_path)
            .map_err(|e| DatapathError::Cgroup(format!("{}: {e}", cgroup_path.display())))?;

        let map_pins: Vec<(&str, PathBuf)> = abi::ALL_MAPS
            .iter()
            .map(|m| (*m, pin_dir.join(m)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(bytes)
            .map_err(|e| DatapathError::load("object", e))?;

        let links_dir = pin_dir.join("links");
        let mut attached = Vec::new();
        // aya gives each program type its own attach/take_link; the steps are the same.
        macro_rules! attach_to_cgroup {
            ($ty:ty, $name:expr) => {{
                let name = $name;
                let prog: &mut $ty = program(&mut ebpf, name)?;
                prog.load().map_err(|e| DatapathError::load(name, e))?;
                let id = prog
                    .attach(&cgroup_file, CgroupAttachMode::Single)
                    .map_err(|e| DatapathError::attach(name, e))?;
                let link = prog
                    .take_link(id)
                    .map_err(|e| DatapathError::attach(name, e))?;
                let link = FdLink::try_from(link).map_err(|e| DatapathError::attach(name, e))?;
                attached.push((name.to_owned(), link));
            }};
        }
        for name in [
            abi::PROG_CONNECT4,
            abi::PROG_GETPEERNAME4,
            abi::PROG_RECVMSG4,
        ] {
            attach_to_cgroup!(CgroupSockAddr, name);
        }
        attach_to_cgroup!(SockOps, abi::PROG_SOCKOPS);
        for (name, kind) in [
            (abi::PROG_TC_INGRESS, TcAttachType::Ingress),
            (abi::PROG_TC_EGRESS, TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().map_err(|e| DatapathError::load(name, e))?;
            // First in the TCX chain: a program before us returning TC_ACT_OK
            // would end the chain and hide traffic from the counters.
            for iface in &settings.interfaces {
                let what = format!("{name} on {iface}");
                match prog.attach_with_options(
                    iface,
                    kind,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                ) {
                    Ok(id) => {
                        let link = prog
                            .take_link(id)
                            .map_err(|e| DatapathError::attach(&what, e))?;
                        let link =
                            FdLink::try_from(link).map_err(|e| DatapathError::attach(&what, e))?;
                        attached.push((format!("{name}_{}", sanitize(iface)), link));
                    }
                    // Kernels before 6.6 have no TCX: classic clsact/cls_bpf. Such a
                    // filter is not a pinnable link; it lives as long as this agent.
                    Err(tcx_error) => {
                        tracing::info!(%iface, error = %super::chain(&tcx_error), "TCX attach failed; falling back to clsact");
                        if let Err(e) = qdisc_add_clsact(iface) {
                            tracing::debug!(%iface, error = %e, "clsact qdisc present or not addable");
                        }
                        prog.attach_with_options(
                            iface,
                            kind,
                            TcAttachOptions::Netlink(NlOptions::default()),
                        )
                        .map_err(|e| DatapathError::attach(&what, e))?;
                    }
                }
            }
        }
        let tables = Tables::take(&mut ebpf, settings.sk_msg)?;
        if settings.sk_msg {
            tables.attach_sk_msg(&mut ebpf)?;
        }
        // New links are live: retire the previous run's, then pin ours. (Link-based
        // cgroup attachment always allows several programs; flags must be 0.)
        std::fs::create_dir_all(&links_dir).map_err(|e| DatapathError::pin(&links_dir, e))?;
        retire_links(&links_dir);
        for (name, link) in attached {
            let path = links_dir.join(&name);
            link.pin(&path).map_err(|e| DatapathError::pin(&path, e))?;
        }
        tracing::info!(
            pins = %pin_dir.display(),
            cgroup = %cgroup_path.display(),
            interfaces = ?settings.interfaces,
            sk_msg = settings.sk_msg,
            "eBPF datapath active: connect4 steering, sock_ops latency, TC counters"
        );
        Ok(Self {
            pin_dir,
            cgroup: cgroup_path,
            tables: Mutex::new(tables),
            stats: ArcSwap::from_pointee(KernelStats::default()),
            _ebpf: Mutex::new(ebpf),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn stats(&self) -> Arc<KernelStats> {
        self.stats.load_full()
    }

    /// Detaches every pinned link and removes every pin.
    pub fn unpin_all(&self) -> Result<(), DatapathError> {
        remove_pins(&self.pin_dir)
    }
}

/// Removes a pin directory's links (detaching them) and maps.
pub fn remove_pins(pin_dir: &Path) -> Result<(), DatapathError> {
    let links_dir = pin_dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            match PinnedLink::from_pin(&path) {
                Ok(link) => drop(link.unpin()),
                Err(_) => drop(std::fs::remove_file(&path)),
            }
        }
        let _ = std::fs::remove_dir(&links_dir);
    }
    for map in abi::ALL_MAPS {
        let path = pin_dir.join(map);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| DatapathError::pin(&path, e))?;
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}

/// Unpins every link of a previous run: ours are attached already, and
/// links for programs or interfaces no longer configured must go too.
fn retire_links(links_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match PinnedLink::from_pin(&path) {
            // Dropping the unpinned link detaches the old program.
            Ok(old) => drop(old.unpin()),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "stale link pin removed");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn prepare_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    let parent = pin_dir.parent().unwrap_or(pin_dir);
    if !steer_host::on_bpffs(parent) && !steer_host::on_bpffs(pin_dir) {
        return Err(DatapathError::Bpffs(format!(
            "{} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)",
            parent.display()
        )));
    }
    std::fs::create_dir_all(pin_dir).map_err(|e| DatapathError::pin(pin_dir, e))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::missing_program(name))?;
    prog.try_into().map_err(|e| DatapathError::load(name, e))
}

/// bpffs rejects '.' in names; interface names may carry one (VLANs).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
