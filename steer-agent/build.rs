//! Builds the eBPF programs (`steer-ebpf`, target bpfel) with aya-build into
//! `$OUT_DIR/steer-ebpf` and exports that path as `STEER_EBPF_OBJECT`.
//!
//! Without a usable `bpf-linker` (or `rust-src`) the object is left EMPTY and
//! the agent runs header-only, unless `STEER_REQUIRE_EBPF=1`, which turns the
//! missing toolchain into a build error. `cargo xtask setup` installs it.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use aya_build::{Package, Toolchain};

/// The toolchain of the nested build; `RUSTC_BOOTSTRAP=1` (set for the nested
/// build only) lets stable build `core` for bpfel.
const TOOLCHAIN: &str = "stable";
const EBPF_PACKAGE: &str = "steer-ebpf";
const REQUIRE: &str = "STEER_REQUIRE_EBPF";
/// Builds without the eBPF object on purpose (the fuzz targets, which
/// exercise the request path only), without a warning.
const SKIP: &str = "STEER_SKIP_EBPF";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    // aya-build copies the bin target to $OUT_DIR/<bin name>.
    let object = out_dir.join(EBPF_PACKAGE);
    println!("cargo:rustc-env=STEER_EBPF_OBJECT={}", object.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={REQUIRE}");
    println!("cargo:rerun-if-env-changed={SKIP}");
    if env::var(SKIP).is_ok_and(|v| v == "1") {
        write_empty(&object);
        return;
    }
    println!("cargo:rerun-if-env-changed=PATH");
    let required = env::var(REQUIRE).is_ok_and(|v| v == "1");

    match toolchain_problem() {
        Some(problem) => {
            if required {
                eprintln!(
                    "error: {REQUIRE}=1 but the eBPF programs cannot be built: {problem}. \
                     Run `cargo xtask setup` to install rust-src and bpf-linker."
                );
                std::process::exit(1);
            }
            let message = format!(
                "eBPF datapath disabled: {problem}; the agent will run header-only. \
                 Run `cargo xtask setup` to install rust-src and bpf-linker \
                 ({REQUIRE}=1 makes this an error)"
            );
            println!("cargo:warning={message}");
            // Rebuild once a bpf-linker appears: adding a file changes the
            // mtime of its PATH directory.
            for dir in path_dirs() {
                if dir.is_dir() {
                    println!("cargo:rerun-if-changed={}", dir.display());
                }
            }
            write_empty(&object);
        }
        None => build(&object, required),
    }
}

fn build(object: &Path, required: bool) {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let workspace = manifest_dir.parent().expect("workspace root");
    let ebpf_dir = workspace.join(EBPF_PACKAGE);
    // aya-build reruns on any change under steer-ebpf/ (abi included); the
    // workspace manifest and lock file choose its profile and dependencies.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    if let Some(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    nested_build_env();
    let root_dir = ebpf_dir.to_str().expect("UTF-8 path");
    // The object must not be stale if aya-build skips (AYA_BUILD_SKIP=1).
    let _ = fs::remove_file(object);
    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(TOOLCHAIN),
    )
    .expect("building the eBPF programs (steer-ebpf) failed");
    if !object.exists() {
        assert!(!required, "{REQUIRE}=1 but no eBPF object was built");
        println!("cargo:warning=eBPF build skipped: the agent will run header-only");
        write_empty(object);
    }
}

/// Environment of the nested cargo: aya-build reads `RUSTC_BOOTSTRAP` from
/// this process (then passes `-Z build-std=core`) and the child inherits both.
/// `CARGO_TERM_QUIET`: aya-build turns every stderr line of the nested cargo
/// ("Compiling core ...") into a cargo:warning; compiler errors and warnings
/// still come through its JSON messages.
#[expect(
    clippy::disallowed_methods,
    reason = "the build script is single-threaded until aya-build spawns the nested cargo"
)]
fn nested_build_env() {
    // SAFETY: no other thread exists yet.
    unsafe {
        env::set_var("RUSTC_BOOTSTRAP", "1");
        env::set_var("CARGO_TERM_QUIET", "true");
    }
}

fn write_empty(object: &Path) {
    fs::write(object, b"").expect("write empty eBPF object");
}

/// Why the eBPF crate cannot be built here, if it cannot.
fn toolchain_problem() -> Option<String> {
    let Some(linker) = which("bpf-linker") else {
        return Some("bpf-linker is not on PATH".into());
    };
    let sysroot = match sysroot() {
        Ok(sysroot) => sysroot,
        Err(e) => return Some(format!("cannot query the {TOOLCHAIN} toolchain: {e}")),
    };
    if !sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Some(format!("rust-src is not installed for {TOOLCHAIN}"));
    }
    // bpf-linker is built against the toolchain's libLLVM; a toolchain update
    // leaves it dangling.
    let ldd = Command::new("ldd").arg(&linker).output();
    let lib = sysroot.join("lib");
    let resolves = ldd.is_ok_and(|out| {
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("libLLVM"))
                .any(|l| l.contains(&*lib.to_string_lossy()) && !l.contains("not found"))
    });
    if !resolves {
        return Some(format!(
            "{} does not resolve libLLVM inside {} (toolchain updated?)",
            linker.display(),
            lib.display()
        ));
    }
    None
}

fn sysroot() -> Result<PathBuf, String> {
    let mut cmd = if which("rustup").is_some() {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", TOOLCHAIN, "rustc"]);
        cmd
    } else {
        Command::new("rustc")
    };
    // Cargo points RUSTC at the outer toolchain; ask the nested one.
    cmd.env_remove("RUSTC").args(["--print", "sysroot"]);
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn path_dirs() -> Vec<PathBuf> {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default()
}

fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path_dirs().into_iter().map(|d| d.join(program)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
