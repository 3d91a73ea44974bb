//! Finding the cgroup v2 hierarchy and the bpffs mount.

use std::path::{Path, PathBuf};

/// The cgroup2 mount point from /proc/self/mountinfo (`/sys/fs/cgroup` on
/// pure v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Option<PathBuf> {
    mount_of("cgroup2")
}

/// Whether `dir` (or a parent) is on a bpf filesystem.
pub fn on_bpffs(dir: &Path) -> bool {
    let mounts = mount_points("bpf");
    dir.ancestors().any(|a| mounts.iter().any(|m| m == a))
}

fn mount_of(fstype: &str) -> Option<PathBuf> {
    mount_points(fstype).into_iter().next()
}

fn mount_points(fstype: &str) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            // "<id> <parent> <dev> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let fs = right.split_whitespace().next()?;
            (fs == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
    }
}
