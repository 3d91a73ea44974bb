//! What the eBPF datapath needs (see `steer-agent/build.rs`): `rust-src` and
//! `bpf-linker` for the stable toolchain, `bpftool` for inspection, bpffs.
//! Every step first checks, so a second run only costs a few process spawns.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::sh;

/// The toolchain `steer-agent/build.rs` builds the eBPF crate with.
const TOOLCHAIN: &str = "stable";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    let sysroot = sysroot()?;
    rust_src(&sysroot)?;
    bpf_linker(&sysroot)?;
    let root = is_root();
    if !root {
        eprintln!("setup: not root: skipping bpftool and bpffs (eBPF tests will skip)");
        return Ok(());
    }
    bpftool()?;
    bpffs()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs through `rustup run` when rustup exists, like aya-build does.
fn toolchain_cmd(program: &str) -> Command {
    if which("rustup").is_some() {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", TOOLCHAIN, program]);
        cmd
    } else {
        Command::new(program)
    }
}

fn sysroot() -> Result<PathBuf> {
    let out = toolchain_cmd("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc")?;
    anyhow::ensure!(out.status.success(), "rustc --print sysroot failed");
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn rust_src(sysroot: &Path) -> Result<()> {
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    sh(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", TOOLCHAIN],
    )
}

/// The toolchain's own libLLVM (`libLLVM-22-rust-1.95.0-stable.so`) and its
/// major version.
fn toolchain_llvm(sysroot: &Path) -> Result<(String, u32)> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("{}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_prefix("libLLVM-")
            .and_then(|s| s.strip_suffix(".so"))
        else {
            continue;
        };
        let major = stem.split('-').next().unwrap_or_default();
        if let Ok(major) = major.parse() {
            return Ok((format!("LLVM-{stem}"), major));
        }
    }
    bail!("no libLLVM-*.so in {}", lib.display())
}

/// bpf-linker is usable when it exists and `ldd` resolves its libLLVM inside
/// the current sysroot (a toolchain update leaves it dangling).
pub fn bpf_linker_ok(sysroot: &Path) -> bool {
    let Some(linker) = which("bpf-linker") else {
        return false;
    };
    let Ok(out) = Command::new("ldd").arg(&linker).output() else {
        return false;
    };
    let ldd = String::from_utf8_lossy(&out.stdout);
    let lib = sysroot.join("lib");
    let lib = lib.to_string_lossy();
    out.status.success()
        && ldd
            .lines()
            .filter(|l| l.contains("libLLVM"))
            .any(|l| l.contains(&*lib) && !l.contains("not found"))
}

fn bpf_linker(sysroot: &Path) -> Result<()> {
    if bpf_linker_ok(sysroot) {
        return Ok(());
    }
    let (lib, major) = toolchain_llvm(sysroot)?;
    let libdir = sysroot.join("lib");
    let libdir = libdir.display();
    let rustflags =
        format!("-C link-arg=-L{libdir} -C link-arg=-l{lib} -C link-arg=-Wl,-rpath,{libdir}");
    let features = format!("llvm-{major},no-llvm-linking");
    let args = [
        "install",
        "--locked",
        "--force",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        &features,
    ];
    eprintln!(
        "+ RUSTFLAGS='{rustflags}' cargo +{TOOLCHAIN} {} (1-2 min)",
        args.join(" ")
    );
    let status = toolchain_cmd("cargo")
        .args(args)
        .env("RUSTFLAGS", &rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("cannot run cargo install")?;
    anyhow::ensure!(status.success(), "installing bpf-linker failed: {status}");
    anyhow::ensure!(
        bpf_linker_ok(sysroot),
        "bpf-linker installed but not on PATH or its libLLVM does not resolve (is ~/.cargo/bin on PATH?)"
    );
    Ok(())
}

fn bpftool() -> Result<()> {
    if which("bpftool").is_some() {
        return Ok(());
    }
    let install = ["install", "-y", "-q", "bpftool"];
    if sh("apt-get", &install).is_err() {
        sh("apt-get", &["update", "-q"])?;
        sh("apt-get", &install)?;
    }
    Ok(())
}

fn bpffs() -> Result<()> {
    let bpffs = std::path::Path::new("/sys/fs/bpf");
    if steer_host::mount_points("bpf").iter().any(|m| m == bpffs) {
        return Ok(());
    }
    sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}

/// `command -v`: the first executable `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
