//! Kernel datapath benchmarks (root only; otherwise skipped with the reason):
//!
//! 1. connect() cost with Steer's cgroup programs (connect4 rewriting a VIP,
//!    sock_ops) vs from a cgroup without programs, same listener.
//! 2. Kernel-measured RTT (sock_ops `srtt_us`) vs userspace handshake and
//!    HTTP round trips, per pod, one pod's link congested.
//! 3. sk_msg redirection on/off for a node-local ping-pong pair.
//!
//! Measurements run in child processes (hidden `cargo xtask __…` helpers,
//! see `probes.rs`) placed in the cgroup each case needs. Every loop is
//! bounded in count and time; every cgroup, netns and pin is removed on drop,
//! also on failure. Ratios are reported, never asserted.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use steer_e2e::netlab::{Lab, cgroup2_root, in_cgroup, privileged};
use steer_e2e::{Proc, binary_dir};

use super::BenchArgs;
use super::report::{ConnectRow, KernelReport, NsSummary, Ratios, Report, RttRow, SkMsgRow};
use crate::stats::{Summary, summarize};

/// A VIP on loopback: if steering failed, connects stay on the host (and
/// are refused: nothing listens there).
const LOOPBACK_VIP: &str = "127.0.0.123:9";
/// on/off must be at least this much lower in p50 and p99 to keep sk_msg.
const CLEAR_MARGIN: f64 = 0.90;

pub async fn run(args: &BenchArgs, report: &mut Report) -> Result<()> {
    let kernel = &mut report.kernel;
    if let Err(reason) = precheck() {
        eprintln!("kernel datapath benchmarks skipped: {reason}");
        kernel.skipped = Some(reason);
        return Ok(());
    }
    let scratch = Scratch::new()?;
    if let Err(e) = loopback(args, &scratch, kernel).await {
        kernel
            .errors
            .push(format!("connect()/sk_msg benchmarks: {e:#}"));
    }
    if let Err(e) = rtt(args, &scratch, kernel).await {
        kernel.errors.push(format!("RTT benchmark: {e:#}"));
    }
    for e in &kernel.errors {
        eprintln!("  kernel bench failed: {e}");
    }
    Ok(())
}

/// Root, bpffs, cgroup v2, and `steer-agent doctor` happy.
fn precheck() -> Result<(), String> {
    privileged()?;
    let out = std::process::Command::new(binary_dir("release").join("steer-agent"))
        .arg("doctor")
        .output()
        .map_err(|e| format!("cannot run steer-agent doctor: {e}"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let missing: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("MISSING"))
            .map(str::trim)
            .collect();
        return Err(format!(
            "`steer-agent doctor` reports missing: {}",
            missing.join("; ")
        ));
    }
    Ok(())
}

// ------------------------------------------------------------ plumbing ----

/// A private copy of this xtask binary (runs the helpers; a concurrent
/// rebuild cannot swap it mid-bench) and a scratch directory.
struct Scratch {
    dir: PathBuf,
    probe: PathBuf,
}

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("steer-bench-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let probe = dir.join("xtask-probe");
        std::fs::copy("/proc/self/exe", &probe).context("copying the xtask binary")?;
        Ok(Self { dir, probe })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cgroup with no programs attached (case (b) of the connect benchmark).
struct PlainCgroup(PathBuf);

impl PlainCgroup {
    fn new() -> Result<Self> {
        let path = cgroup2_root()
            .context("cgroup2")?
            .join(format!("steer-bench-plain-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir_all(&path).context("creating the plain cgroup")?;
        Ok(Self(path))
    }
}

impl Drop for PlainCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs"))
            && !procs.trim().is_empty()
        {
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: plain kill(2) of a helper we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "Drop is synchronous; runs once per bench"
            )]
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs a helper to completion inside `cgroup`; its JSON line.
async fn probe(scratch: &Scratch, cgroup: &Path, args: &[String]) -> Result<Value> {
    let mut cmd = tokio::process::Command::new(&scratch.probe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    in_cgroup(&mut cmd, cgroup);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .with_context(|| format!("{} timed out", args[0]))??;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("{}: bad output {line:?}", args[0]))
}

fn samples(value: &Value, key: &str) -> Vec<u64> {
    value[key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn summary_ns(samples: &[u64]) -> Summary {
    summarize(samples.iter().map(|n| Duration::from_nanos(*n)))
}

/// `steer-agent maps --json` of a pin directory.
async fn maps(pin_dir: &Path) -> Result<Value> {
    let out = tokio::process::Command::new(binary_dir("release").join("steer-agent"))
        .args(["maps", "--json", "--pin-dir"])
        .arg(pin_dir)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "steer-agent maps: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn counter(maps: &Value, name: &str) -> u64 {
    maps["counters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c[0] == name))
        .and_then(|c| c[1].as_u64())
        .unwrap_or(0)
}

fn pod_row(maps: &Value, pod: &str) -> Value {
    maps["pods"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pod"] == pod))
        .cloned()
        .unwrap_or_default()
}

/// The agent inside the lab cgroup (its scrapes are measured), datapath
/// required, pins removed on exit.
async fn start_agent(lab: &Lab, config: &Path, extra: &[&str]) -> Result<Proc> {
    let bin = binary_dir("release").join("steer-agent");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .args([
            "--ext-proc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--unpin",
            "--shutdown-grace-seconds",
            "0",
        ])
        .args(extra)
        .env("RUST_LOG", "warn");
    lab.in_cgroup_tokio(&mut cmd);
    Proc::spawn_command(cmd, &bin, "steer-agent listening").await
}

/// SIGTERM (the agent unpins), then make sure no pin survives: the next
/// agent must start from fresh maps, not inherit a previous sk_msg attachment.
async fn stop_agent(agent: Proc, lab: &Lab) {
    agent.terminate().await;
    let _ = tokio::process::Command::new("rm")
        .arg("-rf")
        .arg(&lab.pin_dir)
        .status()
        .await;
}

/// Waits (bounded) until `check` holds for the pinned maps.
async fn wait_maps(
    pin_dir: &Path,
    within: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let last = maps(pin_dir).await;
        if let Ok(m) = &last
            && check(m)
        {
            return last;
        }
        if Instant::now() > deadline {
            bail!("{what} not seen within {within:?}: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// -------------------------------------- 1 + 3: loopback (connect, sk_msg) ----

async fn loopback(args: &BenchArgs, scratch: &Scratch, out: &mut KernelReport) -> Result<()> {
    let (connects, rounds, pings, sk_rounds) = if args.quick {
        (2000, 2, 5000, 1)
    } else {
        (5000, 5, 20_000, 2)
    };
    let lab = Lab::new(0)?;
    let plain = PlainCgroup::new()?;
    // The listener, outside both cgroups; it also answers the agent's
    // scrapes so the VIP keeps a ready backend.
    let mut cmd = tokio::process::Command::new(&scratch.probe);
    cmd.args(["__listener", "127.0.0.1:0"]);
    let target = Proc::spawn_command(cmd, &scratch.probe, "listening on").await?;
    let SocketAddr::V4(listener) = target.addr() else {
        bail!("listener is not on IPv4");
    };
    let vip: SocketAddrV4 = LOOPBACK_VIP.parse()?;
    let config = scratch.dir.join("loopback.yaml");
    // No TC interfaces: TC on lo would tax both cases alike and blur them.
    std::fs::write(
        &config,
        format!(
            "default_strategy: round-robin\nscrape:\n  interval_ms: 200\n  timeout_ms: 500\n  unhealthy_after: 3\n\
             models:\n  bench:\n    endpoints: [\"{listener}\"]\n    vip: \"{vip}\"\n\
             datapath:\n  mode: required\n  pin_dir: {}\n  cgroup: {}\n  interfaces: []\n",
            lab.pin_dir.display(),
            lab.cgroup.display()
        ),
    )?;
    let vip_ready = |m: &Value| {
        m["vips"].as_array().is_some_and(|vs| {
            vs.iter()
                .any(|v| v["vip"] == vip.to_string().as_str() && !v["chosen"].is_null())
        })
    };

    // 1. connect() cost, agent without sk_msg.
    eprintln!("  kernel: connect() with vs without programs...");
    let agent = start_agent(&lab, &config, &[]).await?;
    let result = async {
        wait_maps(
            &lab.pin_dir,
            Duration::from_secs(15),
            "VIP backend",
            vip_ready,
        )
        .await?;
        connect_bench(scratch, &lab, &plain, vip, listener, connects, rounds).await
    }
    .await;
    stop_agent(agent, &lab).await;
    match result {
        Ok(row) => out.connect = Some(row),
        Err(e) => out.errors.push(format!("connect() benchmark: {e:#}")),
    }

    // 3. sk_msg off/on, alternated; a fresh agent (and fresh maps) each time.
    eprintln!("  kernel: sk_msg on/off ping-pong...");
    let (mut off, mut on) = (PingPong::default(), PingPong::default());
    for _ in 0..sk_rounds {
        for sk_msg in [false, true] {
            let flags: &[&str] = if sk_msg { &["--sk-msg"] } else { &[] };
            let agent = start_agent(&lab, &config, flags).await?;
            let result = async {
                wait_maps(
                    &lab.pin_dir,
                    Duration::from_secs(15),
                    "VIP backend",
                    vip_ready,
                )
                .await?;
                ping_pong(scratch, &lab, pings).await
            }
            .await;
            stop_agent(agent, &lab).await;
            if sk_msg { &mut on } else { &mut off }.add(result?);
        }
    }
    let (off_cpu, on_cpu) = (off.cpu_us_per_round_trip(), on.cpu_us_per_round_trip());
    let (off_redirect, off_pass, on_redirect, on_pass) =
        (off.redirect, off.pass, on.redirect, on.pass);
    let (off, on) = (summary_ns(&off.rtt_ns), summary_ns(&on.rtt_ns));
    let ratio = Ratios::of(
        (on.mean_us, on.p50_us, on.p99_us),
        (off.mean_us, off.p50_us, off.p99_us),
    );
    // Each round trip is two sends (client, echo), warm-up included.
    let sends = 2 * (pings + pings.min(500)) * sk_rounds;
    let wins = ratio.p50 <= CLEAR_MARGIN && ratio.p99 <= CLEAR_MARGIN;
    let verdict = if on_redirect > 0 && wins {
        "keep"
    } else {
        "not worth it here"
    };
    let explanation = if on_redirect == 0 {
        format!(
            "With --sk-msg no send was redirected (sk_msg_redirect Δ 0, sk_msg_pass Δ {on_pass}, ~{sends} sends): the two runs measure the same TCP path, so any difference is noise."
        )
    } else {
        format!(
            "With --sk-msg {on_redirect} of ~{sends} ping-pong sends went socket to socket (sk_msg_pass Δ {on_pass}: sends whose peer is not in STEER_SOCKS, e.g. the agent's own scrapes to a listener outside the cgroup; without --sk-msg Δ {off_redirect}/{off_pass}, no socket is in the map): on/off p50 {:.2}×, p99 {:.2}×; \"keep\" needs both ≤ {CLEAR_MARGIN:.2}×. CPU per round trip (client + echo) {:.1} + {:.1} µs on vs {:.1} + {:.1} µs off: redirection skips the TCP/IP stack, not the wake-up of the peer thread.",
            ratio.p50, ratio.p99, on_cpu.0, on_cpu.1, off_cpu.0, off_cpu.1
        )
    };
    out.sk_msg = Some(SkMsgRow {
        message_bytes: 64,
        off,
        on,
        ratio,
        off_redirect,
        off_pass,
        on_redirect,
        on_pass,
        off_cpu_us_per_round_trip: off_cpu,
        on_cpu_us_per_round_trip: on_cpu,
        rounds: sk_rounds,
        verdict: verdict.into(),
        explanation,
    });
    drop(target);
    Ok(())
}

async fn connect_bench(
    scratch: &Scratch,
    lab: &Lab,
    plain: &PlainCgroup,
    vip: SocketAddrV4,
    listener: SocketAddrV4,
    connects: usize,
    rounds: usize,
) -> Result<ConnectRow> {
    let per_round = connects / rounds;
    let before = counter(&maps(&lab.pin_dir).await?, "connect_rewrite");
    let (mut with, mut with_cycle, mut without, mut without_cycle) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which case goes first so drift on the shared cores
        // falls on both alike.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for steered in order {
            let (cgroup, target) = if steered {
                (&lab.cgroup, vip)
            } else {
                (&plain.0, listener)
            };
            let v = probe(
                scratch,
                cgroup,
                &[
                    "__connect-loop".into(),
                    target.to_string(),
                    per_round.to_string(),
                ],
            )
            .await?;
            if steered {
                with.extend(samples(&v, "connect_ns"));
                with_cycle.extend(samples(&v, "cycle_ns"));
            } else {
                without.extend(samples(&v, "connect_ns"));
                without_cycle.extend(samples(&v, "cycle_ns"));
            }
        }
    }
    let rewrites = counter(&maps(&lab.pin_dir).await?, "connect_rewrite").saturating_sub(before);
    ensure!(
        rewrites as usize >= with.len(),
        "only {rewrites} connect4 rewrites for {} VIP connects",
        with.len()
    );
    let baseline_programs = effective_programs(&plain.0);
    if !baseline_programs.is_empty() {
        eprintln!(
            "  warning: the plain cgroup inherits cgroup programs from an ancestor: {}",
            baseline_programs.join(", ")
        );
    }
    let (a, b) = (NsSummary::of(&with), NsSummary::of(&without));
    let (ac, bc) = (NsSummary::of(&with_cycle), NsSummary::of(&without_cycle));
    let tuple = |s: &NsSummary| (s.mean_ns, s.p50_ns, s.p99_ns);
    Ok(ConnectRow {
        with_programs: a,
        without_programs: b,
        with_programs_cycle: ac,
        without_programs_cycle: bc,
        ratio: Ratios::of(tuple(&a), tuple(&b)),
        ratio_cycle: Ratios::of(tuple(&ac), tuple(&bc)),
        connect_rewrites: rewrites,
        rounds,
        baseline_programs,
    })
}

/// Programs that run for sockets of `cgroup`, its ancestors' included
/// (`name (attach type)`), from bpftool; empty when bpftool is missing.
fn effective_programs(cgroup: &Path) -> Vec<String> {
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .arg("effective")
        .output()
    else {
        return Vec::new();
    };
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.as_array()
        .map(|progs| {
            progs
                .iter()
                .map(|p| {
                    format!(
                        "{} ({})",
                        p["name"].as_str().unwrap_or("?"),
                        p["attach_type"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Echo server + ping-pong client, both in the lab cgroup on 127.0.0.1;
/// round-trip samples and the sk_msg counter deltas.
async fn ping_pong(scratch: &Scratch, lab: &Lab, pings: usize) -> Result<PingPong> {
    let mut cmd = tokio::process::Command::new(&scratch.probe);
    cmd.args(["__echo-server", "127.0.0.1:0"]);
    in_cgroup(&mut cmd, &lab.cgroup);
    let echo = Proc::spawn_command(cmd, &scratch.probe, "listening on").await?;
    let echo_cpu_before = echo.pid().map_or(0, process_cpu_ns);
    let before = maps(&lab.pin_dir).await?;
    let v = probe(
        scratch,
        &lab.cgroup,
        &[
            "__ping-pong".into(),
            echo.addr().to_string(),
            pings.to_string(),
            "--size".into(),
            "64".into(),
        ],
    )
    .await?;
    let after = maps(&lab.pin_dir).await?;
    let echo_cpu = echo
        .pid()
        .map_or(0, process_cpu_ns)
        .saturating_sub(echo_cpu_before);
    echo.kill().await;
    let delta = |name| counter(&after, name).saturating_sub(counter(&before, name));
    Ok(PingPong {
        rtt_ns: samples(&v, "rtt_ns"),
        round_trips: v["round_trips_total"].as_u64().unwrap_or(0),
        client_cpu_ns: v["cpu_ns"].as_u64().unwrap_or(0),
        echo_cpu_ns: echo_cpu,
        redirect: delta("sk_msg_redirect"),
        pass: delta("sk_msg_pass"),
    })
}

/// One ping-pong run: samples, CPU of both ends, sk_msg counter deltas.
#[derive(Default)]
struct PingPong {
    rtt_ns: Vec<u64>,
    /// Including the warm-up (the CPU figures cover it too).
    round_trips: u64,
    client_cpu_ns: u64,
    echo_cpu_ns: u64,
    redirect: u64,
    pass: u64,
}

impl PingPong {
    fn add(&mut self, other: Self) {
        self.rtt_ns.extend(other.rtt_ns);
        self.round_trips += other.round_trips;
        self.client_cpu_ns += other.client_cpu_ns;
        self.echo_cpu_ns += other.echo_cpu_ns;
        self.redirect += other.redirect;
        self.pass += other.pass;
    }

    /// (client, echo server) CPU µs per round trip.
    fn cpu_us_per_round_trip(&self) -> (f64, f64) {
        let per = |ns: u64| ns as f64 / 1e3 / self.round_trips.max(1) as f64;
        (per(self.client_cpu_ns), per(self.echo_cpu_ns))
    }
}

/// CPU time of a process's main thread in ns (`/proc/PID/schedstat`,
/// nanosecond precision; the echo server works on its main thread).
fn process_cpu_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// --------------------------------------------------- 2: RTT per pod ----

async fn rtt(args: &BenchArgs, scratch: &Scratch, out: &mut KernelReport) -> Result<()> {
    eprintln!("  kernel: kernel vs userspace RTT per pod...");
    let probes = if args.quick { 20 } else { 50 };
    let lab = Lab::new(2)?;
    let engines = lab.start_engines("release").await?;
    let config = scratch.dir.join("rtt.yaml");
    lab.write_config(&config, "")?;
    // Congest pod 1: a slow token bucket kept full by a bulk upload from
    // outside the cgroup (bounded: 60 s, and aborted with the bench).
    let kbit = 800;
    let _bulk = lab.pods[1].congest(kbit).await?;
    let agent = start_agent(&lab, &config, &[]).await?;
    let pods: Vec<String> = lab.pods.iter().map(|p| format!("{}:8000", p.ip)).collect();
    let result = async {
        // The agent's scrapes (every 50 ms) give both pods RTT samples.
        wait_maps(
            &lab.pin_dir,
            Duration::from_secs(15),
            "RTT samples for both pods",
            |m| {
                pods.iter()
                    .all(|p| pod_row(m, p)["rtt_samples"].as_u64().unwrap_or(0) > 0)
            },
        )
        .await?;
        // Let the queue build and srtt converge.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut rows = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let v = probe(
                scratch,
                &lab.cgroup,
                &["__rtt-probe".into(), pod.clone(), probes.to_string()],
            )
            .await?;
            let kernel = pod_row(&maps(&lab.pin_dir).await?, pod);
            let user_connect = summary_ns(&samples(&v, "connect_ns"));
            let user_http = summary_ns(&samples(&v, "http_ns"));
            let srtt = kernel["srtt_us"].as_f64().unwrap_or(0.0);
            let ratio = |u: f64| if u > 0.0 { srtt / u } else { 0.0 };
            rows.push(RttRow {
                pod: format!("pod-{i} {pod}"),
                congested: i == 1,
                kernel_srtt_us: srtt,
                kernel_rtt_samples: kernel["rtt_samples"].as_u64().unwrap_or(0),
                user_connect,
                user_connect_failed: v["connect_failed"].as_u64().unwrap_or(0),
                user_http,
                kernel_vs_connect_p50: ratio(user_connect.p50_us),
                kernel_vs_http_p50: ratio(user_http.p50_us),
            });
        }
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    stop_agent(agent, &lab).await;
    out.rtt = result?;
    out.rtt_setup = format!(
        "2 pods (network namespaces on veth); pod 1's host→pod direction shaped to {kbit} kbit/s (tbf, ≤ 200 ms queue) and kept full by a bulk upload; kernel = sock_ops srtt after the probe (agent's scrapes every 50 ms + the probe's connections); userspace = {probes} connect() handshakes and {probes} keep-alive GET /health from the agent's cgroup."
    );
    drop(engines);
    Ok(())
}
