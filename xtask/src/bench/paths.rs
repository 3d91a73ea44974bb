//! The request paths the overhead bench compares, all on the same four mock
//! engines and, except `direct`, through real Envoy (`--concurrency 1`):
//!
//! - `direct`: client → engine (round-robin over the engines by the client);
//! - `envoy`: plain Envoy, the shipped `envoy.yaml` without its ext_proc
//!   filters and with a round-robin cluster over the engines;
//! - `floor-headers`: `envoy.yaml` with no body sent ⇄ `noop-extproc`, which
//!   names a pod round-robin in its headers reply (what one ext_proc stream
//!   per request costs Envoy);
//! - `floor-one-wait`: the shipped `envoy.yaml` ⇄ `noop-extproc` in the
//!   one-wait mode (holds the headers reply until the body ends, then answers
//!   it with a pod and every body chunk): the floor the agent is judged against;
//! - `steer`: the shipped `envoy.yaml` ⇄ steer-agent (least-request: the
//!   prompt is not read);
//! - `steer-prefix`: the same, each request asking for `prefix-cache`
//!   (`routing-strategy` header: the prompt is read and hashed);
//! - `steer-uds`: a second stack (its own four engines, agent and Envoy, the
//!   same shipped config) where Envoy reaches the agent over a Unix socket
//!   (`pipe` address) instead of loopback TCP;
//! - `steer-observer`: `envoy.yaml` with its usage observer turned on ⇄ the
//!   same agent (what per-request usage accounting costs);
//! - `steer-duplex`: the shipped `envoy-full-duplex.yaml` ⇄ the same agent;
//! - `vllm-router`, `sglang-router`: the peer routers ([`super::peers`]),
//!   round_robin, in place of Envoy (their CPU is reported as the proxy's).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use steer_e2e::envoy::{Doc, headers_only, render, with_usage_observer, without_ext_proc};
use steer_e2e::{
    DEFAULT_ENVOY, Envoy, EnvoyConfig, ExtProcTransport, Proc, Stack, StackOptions, binary_dir,
};

use super::peers::{Kind, Peer};

pub struct Path {
    pub name: &'static str,
    /// Where the client sends (several: rotated per request).
    pub targets: Vec<SocketAddr>,
    /// The proxy's pid: Envoy, or the peer router (none for `direct`).
    pub envoy_pid: Option<u32>,
    /// The ext_proc server's pid (agent or no-op), if the path has one.
    pub ext_proc_pid: Option<u32>,
    /// Headers every request on this path carries.
    pub headers: &'static [(&'static str, &'static str)],
}

/// Everything running for one set of engines; dropped = stopped.
pub struct Paths {
    pub paths: Vec<Path>,
    pub envoy_version: String,
    _stack: Stack,
    _uds_stack: Option<Stack>,
    _extra_envoys: Vec<Envoy>,
    _peers: Vec<Peer>,
    _noop: Proc,
    dir: PathBuf,
}

impl Drop for Paths {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts every path `wanted` names (the others' processes may still run:
/// they share the stack).
pub async fn start(engine_args: Vec<String>, wanted: &dyn Fn(&str) -> bool) -> Result<Paths> {
    let options = StackOptions {
        profile: "release",
        engines: (0..4)
            .map(|_| ("m".to_owned(), engine_args.clone()))
            .collect(),
        default_strategy: "least-request".into(),
        ..Default::default()
    };
    let stack = Stack::start(options.clone()).await?;
    let uds_stack = if wanted("steer-uds") {
        Some(
            Stack::start(StackOptions {
                ext_proc_transport: ExtProcTransport::Unix,
                ..options.clone()
            })
            .await?,
        )
    } else {
        None
    };
    let engines: Vec<SocketAddr> = stack.engines.iter().map(Proc::addr).collect();
    let dir = std::env::temp_dir().join(format!("steer-bench-{}", std::process::id()));
    let noop = spawn_noop(&engines, &[]).await?;
    let shipped = EnvoyConfig::OneWait;
    let start = |doc: Doc, config: EnvoyConfig| {
        let dir = dir.clone();
        async move { Envoy::start(DEFAULT_ENVOY, &doc, &dir, &config.path()).await }
    };
    let plain = start(
        without_ext_proc(render(shipped, noop.addr())?, &engines)?,
        shipped,
    )
    .await?;
    let floor_headers = start(headers_only(render(shipped, noop.addr())?)?, shipped).await?;
    let floor_one_wait = start(render(shipped, noop.addr())?, shipped).await?;
    let observer = start(
        with_usage_observer(render(shipped, stack.ext_proc())?)?,
        shipped,
    )
    .await?;
    let duplex = EnvoyConfig::FullDuplex;
    let duplex_envoy = start(render(duplex, stack.ext_proc())?, duplex).await?;
    let agent = stack.agent.pid();
    let through = |name, envoy: &Envoy, ext_proc_pid| Path {
        name,
        targets: vec![envoy.listener],
        envoy_pid: envoy.proc.pid(),
        ext_proc_pid,
        headers: &[],
    };
    let engines_for_peers = engines.clone();
    let mut paths = vec![
        Path {
            name: "direct",
            targets: engines,
            envoy_pid: None,
            ext_proc_pid: None,
            headers: &[],
        },
        through("envoy", &plain, None),
        through("floor-headers", &floor_headers, noop.pid()),
        through("floor-one-wait", &floor_one_wait, noop.pid()),
        through("steer", &stack.envoy, agent),
        Path {
            headers: &[("routing-strategy", "prefix-cache")],
            ..through("steer-prefix", &stack.envoy, agent)
        },
        through("steer-observer", &observer, agent),
    ];
    if let Some(uds) = &uds_stack {
        paths.push(through("steer-uds", &uds.envoy, uds.agent.pid()));
    }
    paths.push(through("steer-duplex", &duplex_envoy, agent));
    let mut peers = Vec::new();
    paths.retain(|p| wanted(p.name));
    for kind in [Kind::Vllm, Kind::Sglang]
        .into_iter()
        .filter(|k| wanted(k.name()))
    {
        let peer = super::peers::start(kind, "round_robin", &engines_for_peers, "m").await?;
        paths.push(Path {
            name: kind.name(),
            targets: vec![peer.addr],
            envoy_pid: peer.pid(),
            ext_proc_pid: None,
            headers: &[],
        });
        peers.push(peer);
    }
    Ok(Paths {
        paths,
        envoy_version: stack.envoy.version.clone(),
        _stack: stack,
        _uds_stack: uds_stack,
        _extra_envoys: vec![plain, floor_headers, floor_one_wait, observer, duplex_envoy],
        _peers: peers,
        _noop: noop,
        dir,
    })
}

/// `noop-extproc` naming `engines` round-robin, with `extra` flags.
pub async fn spawn_noop(engines: &[SocketAddr], extra: &[&str]) -> Result<Proc> {
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    for e in engines {
        args.extend(["--pod".to_owned(), e.to_string()]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Proc::spawn(
        &binary_dir("release").join("noop-extproc"),
        &args,
        "listening on",
    )
    .await
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
