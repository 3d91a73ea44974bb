//! Host facts from `/proc/self`, parsed in one place: mount points by
//! filesystem type (`mountinfo`, with its octal escapes) and the effective
//! capability set (`status`, `CapEff`).

use std::path::{Path, PathBuf};

/// Mount points of filesystems of type `fstype` (`cgroup2`, `bpf`, …), in
/// mountinfo order.
pub fn mount_points(fstype: &str) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mount_points(&text, fstype))
        .unwrap_or_default()
}

/// The first mount point of `fstype`.
pub fn mount_point(fstype: &str) -> Option<PathBuf> {
    mount_points(fstype).into_iter().next()
}

/// The cgroup v2 hierarchy (`/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Option<PathBuf> {
    mount_point("cgroup2")
}

/// Whether `dir` (or a parent) is a bpf filesystem mount point.
pub fn on_bpffs(dir: &Path) -> bool {
    let mounts = mount_points("bpf");
    dir.ancestors().any(|a| mounts.iter().any(|m| m == a))
}

/// `<id> <parent> <dev> <root> <mount point> <opts> [optional…] - <fstype> <source> <super opts>`
pub fn parse_mount_points(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let fs = right.split_whitespace().next()?;
            (fs == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8))
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Linux capability: its name and bit in the capability sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
};

/// This process's effective capability set (`CapEff`), 0 if unreadable.
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Those of `needed` that `effective` lacks.
pub fn missing(effective: u64, needed: &[Capability]) -> Vec<Capability> {
    needed
        .iter()
        .filter(|c| effective & (1 << c.bit) == 0)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_by_type_with_escapes() {
        let text = "\
25 1 0:22 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
26 1 0:23 / /sys/fs/bpf rw - bpf bpf rw
27 1 0:24 / /mnt/a\\040b rw shared:1 - bpf bpf rw
";
        assert_eq!(
            parse_mount_points(text, "cgroup2"),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert_eq!(
            parse_mount_points(text, "bpf"),
            [PathBuf::from("/sys/fs/bpf"), PathBuf::from("/mnt/a b")]
        );
        assert!(parse_mount_points(text, "ext4").is_empty());
        assert_eq!(unescape(r"/x\134y\"), r"/x\y\");
    }

    #[test]
    fn capabilities_from_status() {
        let status = "Name:\tx\nCapEff:\t0000008000001000\n";
        let caps = parse_cap_eff(status).unwrap();
        assert!(missing(caps, &[CAP_BPF, CAP_NET_ADMIN]).is_empty());
        assert_eq!(missing(1 << 39, &[CAP_BPF, CAP_NET_ADMIN]), [CAP_NET_ADMIN]);
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
