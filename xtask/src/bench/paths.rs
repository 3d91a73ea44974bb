//! The request paths the overhead bench compares, all on the same four mock
//! engines and, except `direct`, through real Envoy (`--concurrency 1`):
//!
//! - `direct`: client → engine (round-robin over the engines by the client);
//! - `envoy`: plain Envoy, the shipped `envoy.yaml` without its ext_proc
//!   filter and with a round-robin cluster over the engines;
//! - `noop`: the shipped `envoy.yaml` ⇄ `noop-extproc`, a server that answers
//!   every message at once and names a pod round-robin (the protocol floor);
//! - `steer`: the shipped `envoy.yaml` ⇄ steer-agent;
//! - `steer-duplex`: the shipped `envoy-full-duplex.yaml` ⇄ the same agent.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use steer_e2e::envoy::{render, without_ext_proc};
use steer_e2e::{DEFAULT_ENVOY, Envoy, EnvoyConfig, Proc, Stack, StackOptions, binary_dir};

pub struct Path {
    pub name: &'static str,
    /// Where the client sends (several: rotated per request).
    pub targets: Vec<SocketAddr>,
    /// Envoy's pid (none for `direct`).
    pub envoy_pid: Option<u32>,
    /// The ext_proc server's pid (agent or no-op), if the path has one.
    pub ext_proc_pid: Option<u32>,
}

/// Everything running for one set of engines; dropped = stopped.
pub struct Paths {
    pub paths: Vec<Path>,
    pub envoy_version: String,
    _stack: Stack,
    _extra_envoys: Vec<Envoy>,
    _noop: Proc,
    dir: PathBuf,
}

impl Drop for Paths {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn start(engine_args: Vec<String>) -> Result<Paths> {
    let stack = Stack::start(StackOptions {
        profile: "release",
        engines: (0..4)
            .map(|_| ("m".to_owned(), engine_args.clone()))
            .collect(),
        default_strategy: "least-request".into(),
        ..Default::default()
    })
    .await?;
    let engines: Vec<SocketAddr> = stack.engines.iter().map(Proc::addr).collect();
    let dir = std::env::temp_dir().join(format!("steer-bench-{}", std::process::id()));
    let mut noop_args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    for e in &engines {
        noop_args.extend(["--pod".to_owned(), e.to_string()]);
    }
    let noop = Proc::spawn(
        &binary_dir("release").join("noop-extproc"),
        &noop_args,
        "listening on",
    )
    .await?;
    let buffered = EnvoyConfig::Buffered;
    let plain_doc = without_ext_proc(render(buffered, noop.addr())?, &engines)?;
    let plain = Envoy::start(DEFAULT_ENVOY, &plain_doc, &dir, &buffered.path()).await?;
    let noop_envoy = Envoy::start(
        DEFAULT_ENVOY,
        &render(buffered, noop.addr())?,
        &dir,
        &buffered.path(),
    )
    .await?;
    let duplex = EnvoyConfig::FullDuplex;
    let duplex_envoy = Envoy::start(
        DEFAULT_ENVOY,
        &render(duplex, stack.ext_proc())?,
        &dir,
        &duplex.path(),
    )
    .await?;
    let agent = stack.agent.pid();
    let paths = vec![
        Path {
            name: "direct",
            targets: engines,
            envoy_pid: None,
            ext_proc_pid: None,
        },
        Path {
            name: "envoy",
            targets: vec![plain.listener],
            envoy_pid: plain.proc.pid(),
            ext_proc_pid: None,
        },
        Path {
            name: "noop",
            targets: vec![noop_envoy.listener],
            envoy_pid: noop_envoy.proc.pid(),
            ext_proc_pid: noop.pid(),
        },
        Path {
            name: "steer",
            targets: vec![stack.gateway()],
            envoy_pid: stack.envoy.proc.pid(),
            ext_proc_pid: agent,
        },
        Path {
            name: "steer-duplex",
            targets: vec![duplex_envoy.listener],
            envoy_pid: duplex_envoy.proc.pid(),
            ext_proc_pid: agent,
        },
    ];
    Ok(Paths {
        paths,
        envoy_version: stack.envoy.version.clone(),
        _stack: stack,
        _extra_envoys: vec![plain, noop_envoy, duplex_envoy],
        _noop: noop,
        dir,
    })
}

/// Nanoseconds a process has run on a CPU: the sum of every thread's
/// `/proc/PID/task/TID/schedstat` field 1 (`/proc/PID/schedstat` alone
/// covers only the main thread; the threads here live as long as the process).
pub fn cpu_ns(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
