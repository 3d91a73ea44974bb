//! `steer-agent doctor`: what the eBPF datapath needs and what is missing.

use std::path::Path;

use super::{object, privileges};

#[derive(Debug, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

pub fn run(pin_dir: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name, ok, detail: String| checks.push(Check { name, ok, detail });

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = parse_version(release.trim());
    check(
        "kernel",
        version >= (6, 1),
        format!(
            "{} (needs >= 6.1 for TCX-era sock_addr/sock_ops features; 5.8+ works without TCX)",
            release.trim()
        ),
    );
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    check(
        "btf",
        btf,
        if btf {
            "/sys/kernel/btf/vmlinux present".into()
        } else {
            "no kernel BTF (CONFIG_DEBUG_INFO_BTF)".into()
        },
    );
    let bpffs =
        steer_host::on_bpffs(pin_dir.parent().unwrap_or(pin_dir)) || steer_host::on_bpffs(pin_dir);
    check(
        "bpffs",
        bpffs,
        if bpffs {
            format!("{} is on bpffs", pin_dir.display())
        } else {
            format!(
                "{} is not on bpffs: mount -t bpf bpf /sys/fs/bpf",
                pin_dir.display()
            )
        },
    );
    match steer_host::cgroup2_root() {
        Some(root) => check("cgroup2", true, format!("mounted at {}", root.display())),
        None => check(
            "cgroup2",
            false,
            "no cgroup2 mount (connect4/sock_ops attach to a cgroup v2)".into(),
        ),
    }
    let missing = privileges::missing();
    check(
        "privileges",
        missing.is_empty(),
        if missing.is_empty() {
            format!("{} effective", privileges::required_text())
        } else {
            format!(
                "missing {} (the datapath needs {})",
                missing.join(", "),
                privileges::required_text()
            )
        },
    );
    let bytes = object::object();
    check(
        "ebpf-object",
        !bytes.is_empty(),
        if bytes.is_empty() {
            "agent built without the eBPF object: run `cargo xtask setup` and rebuild".into()
        } else {
            format!("{} bytes embedded", bytes.len())
        },
    );
    checks
}

fn parse_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_kernel_versions() {
        assert_eq!(super::parse_version("6.18.44-fc-v657"), (6, 18));
        assert_eq!(super::parse_version("5.4.0"), (5, 4));
        assert_eq!(super::parse_version(""), (0, 0));
    }
}
