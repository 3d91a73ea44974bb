//! The bench report: JSON for machines, markdown for people.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use std::time::Duration;

use crate::stats::{Summary, ms, summarize};

#[derive(Debug, Default, Serialize)]
pub struct QualityRow {
    pub strategy: String,
    pub ok: usize,
    pub requests: usize,
    pub ttft: Summary,
    pub hit_rate: f64,
    pub per_engine: Vec<usize>,
    pub ttft_vs_oracle: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub envoy_version: String,
    pub overhead: Vec<super::overhead::CaseResult>,
    pub quality_workload: String,
    pub quality: Vec<QualityRow>,
    pub kernel: KernelReport,
}

/// Nanosecond statistics (connect() is a few µs: µs rounding hides it).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct NsSummary {
    pub count: usize,
    pub mean_ns: f64,
    pub p50_ns: f64,
    pub p99_ns: f64,
}

impl NsSummary {
    pub fn of(samples: &[u64]) -> Self {
        let s = summarize(samples.iter().map(|ns| Duration::from_nanos(*ns)));
        Self {
            count: s.count,
            mean_ns: s.mean_us * 1e3,
            p50_ns: s.p50_us * 1e3,
            p99_ns: s.p99_us * 1e3,
        }
    }
}

/// (a) / (b) of mean, p50 and p99.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Ratios {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

impl Ratios {
    pub fn of(a: (f64, f64, f64), b: (f64, f64, f64)) -> Self {
        let r = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
        Self {
            mean: r(a.0, b.0),
            p50: r(a.1, b.1),
            p99: r(a.2, b.2),
        }
    }
}

/// connect() to a local listener with Steer's cgroup programs (VIP
/// rewritten by connect4) vs from a cgroup without programs.
#[derive(Debug, Default, Serialize)]
pub struct ConnectRow {
    pub with_programs: NsSummary,
    pub without_programs: NsSummary,
    /// connect() + close(), same runs.
    pub with_programs_cycle: NsSummary,
    pub without_programs_cycle: NsSummary,
    pub ratio: Ratios,
    pub ratio_cycle: Ratios,
    /// `connect_rewrite` counter delta over the (a) runs.
    pub connect_rewrites: u64,
    pub rounds: usize,
    /// Programs case (b) still runs, inherited from an ancestor cgroup
    /// (e.g. an agent attached to the cgroup root); empty = program-free.
    pub baseline_programs: Vec<String>,
}

/// Kernel-measured vs userspace-measured RTT of one pod.
#[derive(Debug, Default, Serialize)]
pub struct RttRow {
    pub pod: String,
    pub congested: bool,
    pub kernel_srtt_us: f64,
    pub kernel_rtt_samples: u64,
    /// Handshake time (one RTT) seen by connect().
    pub user_connect: Summary,
    pub user_connect_failed: u64,
    /// `GET /health` round trip on a keep-alive connection.
    pub user_http: Summary,
    pub kernel_vs_connect_p50: f64,
    pub kernel_vs_http_p50: f64,
}

/// Request-response latency of a node-local pair with and without sk_msg.
#[derive(Debug, Default, Serialize)]
pub struct SkMsgRow {
    pub message_bytes: usize,
    pub off: Summary,
    pub on: Summary,
    /// on / off.
    pub ratio: Ratios,
    pub off_redirect: u64,
    pub off_pass: u64,
    pub on_redirect: u64,
    pub on_pass: u64,
    /// (ping-pong client, echo server) CPU µs per round trip.
    pub off_cpu_us_per_round_trip: (f64, f64),
    pub on_cpu_us_per_round_trip: (f64, f64),
    pub rounds: usize,
    pub verdict: String,
    pub explanation: String,
}

#[derive(Debug, Default, Serialize)]
pub struct KernelReport {
    /// Why the kernel rows are missing (not privileged, doctor failed).
    pub skipped: Option<String>,
    pub connect: Option<ConnectRow>,
    pub rtt: Vec<RttRow>,
    pub rtt_setup: String,
    pub sk_msg: Option<SkMsgRow>,
    /// Parts that failed to run, with the error.
    pub errors: Vec<String>,
}

impl Report {
    /// Writes `target/bench/<name>.json` and `<name>.md`.
    pub fn write(&self, name: &str) -> Result<()> {
        let dir = crate::root().join("target/bench");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        let table = self.markdown();
        std::fs::write(dir.join(format!("{name}.md")), &table)?;
        if !self.overhead.is_empty() {
            std::fs::write(
                dir.join("latency-vs-concurrency.svg"),
                super::overhead_report::chart_svg(&self.overhead),
            )?;
        }
        println!("{table}");
        println!("written: {}/{name}.json, {name}.md", dir.display());
        Ok(())
    }

    fn markdown(&self) -> String {
        if self.overhead.is_empty() && self.quality.is_empty() {
            // `--kernel-only`.
            let mut md = String::new();
            self.kernel.markdown(&mut md);
            return md;
        }
        let mut md = String::new();
        super::overhead_report::markdown(&self.overhead, &self.envoy_version, &mut md);
        if self.quality.is_empty() {
            // `--case`: overhead only.
            return md;
        }
        let _ = write!(md, "\n## Routing quality: {}\n\n", self.quality_workload);
        md.push_str("| strategy | ok | TTFT mean ms | TTFT p99 ms | × oracle | prefix hit rate | requests per engine |\n|---|---|---|---|---|---|---|\n");
        for r in &self.quality {
            let _ = writeln!(
                md,
                "| {} | {}/{} | {} | {} | {:.2}× | {:.0}% | {:?} |",
                r.strategy,
                r.ok,
                r.requests,
                ms(r.ttft.mean_us),
                ms(r.ttft.p99_us),
                r.ttft_vs_oracle,
                r.hit_rate * 100.0,
                r.per_engine
            );
        }
        md.push_str("\nThe oracle goes through the shipped `envoy.yaml` too (a no-op ext_proc server routes each tenant to its warm pod), so × oracle compares like with like; the peer routers run cache_aware on the same engines in the same run, in place of Envoy. Target (issue #10): prefix-cache TTFT ≤ 1.05× the oracle and ahead of both peers.\n");
        self.kernel.markdown(&mut md);
        md
    }
}

impl KernelReport {
    fn markdown(&self, md: &mut String) {
        md.push_str("\n## Kernel datapath\n\n");
        if let Some(reason) = &self.skipped {
            let _ = writeln!(md, "Skipped: {reason}.");
            return;
        }
        for e in &self.errors {
            let _ = writeln!(md, "**Failed:** {e}\n");
        }
        if let Some(c) = &self.connect {
            md.push_str("### connect() with vs without Steer's cgroup programs (ns)\n\n");
            md.push_str("| case | connects | connect() mean | p50 | p99 | connect+close mean | p50 | p99 |\n|---|---|---|---|---|---|---|---|\n");
            let row = |md: &mut String, name: &str, s: &NsSummary, cy: &NsSummary| {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    s.count, s.mean_ns, s.p50_ns, s.p99_ns, cy.mean_ns, cy.p50_ns, cy.p99_ns
                );
            };
            row(
                md,
                &format!(
                    "(a) Steer cgroup, VIP → listener ({} rewrites)",
                    c.connect_rewrites
                ),
                &c.with_programs,
                &c.with_programs_cycle,
            );
            row(
                md,
                "(b) plain cgroup, listener address",
                &c.without_programs,
                &c.without_programs_cycle,
            );
            let _ = writeln!(
                md,
                "| **(a)/(b)** | | **{:.2}×** | **{:.2}×** | **{:.2}×** | {:.2}× | {:.2}× | {:.2}× |",
                c.ratio.mean,
                c.ratio.p50,
                c.ratio.p99,
                c.ratio_cycle.mean,
                c.ratio_cycle.p50,
                c.ratio_cycle.p99
            );
            let _ = writeln!(
                md,
                "\nconnect4 (VIP lookup + rewrite + reverse-NAT entry) and sock_ops (pod callbacks) add {:.0} ns at p50 ({:+.0}%) to a loopback connect(); {} rounds, (a) and (b) alternated, RST close, no TC programs.",
                c.with_programs.p50_ns - c.without_programs.p50_ns,
                (c.ratio.p50 - 1.0) * 100.0,
                c.rounds
            );
            if !c.baseline_programs.is_empty() {
                let _ = writeln!(
                    md,
                    "\n**Caveat:** (b) is not program-free on this run: it inherits {} from an ancestor cgroup (something attached them to the cgroup root). (a) − (b) still isolates the cost of the lab cgroup's programs (VIP hit); the ratio understates it.",
                    c.baseline_programs.join(", ")
                );
            }
        }
        if !self.rtt.is_empty() {
            let _ = writeln!(
                md,
                "\n### Kernel RTT vs userspace RTT per pod\n\n{}\n",
                self.rtt_setup
            );
            md.push_str("| pod | link | kernel srtt µs (samples) | userspace connect RTT p50 µs (n) | userspace HTTP RTT p50 µs (n) | kernel / connect | kernel / HTTP |\n|---|---|---|---|---|---|---|\n");
            for r in &self.rtt {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} ({}) | {:.0} ({}{}) | {:.0} ({}) | {:.2} | {:.2} |",
                    r.pod,
                    if r.congested { "congested" } else { "idle" },
                    r.kernel_srtt_us,
                    r.kernel_rtt_samples,
                    r.user_connect.p50_us,
                    r.user_connect.count,
                    if r.user_connect_failed > 0 {
                        format!(", {} failed", r.user_connect_failed)
                    } else {
                        String::new()
                    },
                    r.user_http.p50_us,
                    r.user_http.count,
                    r.kernel_vs_connect_p50,
                    r.kernel_vs_http_p50
                );
            }
            let _ = writeln!(md, "\n{}", rtt_interpretation(&self.rtt));
        }
        if let Some(s) = &self.sk_msg {
            let _ = writeln!(
                md,
                "\n### sk_msg redirection on/off: {}-byte ping-pong over one 127.0.0.1 connection (µs)\n",
                s.message_bytes
            );
            md.push_str("| agent | round trips | p50 | p99 | mean | CPU µs/round trip (client + echo) | sk_msg_redirect Δ | sk_msg_pass Δ |\n|---|---|---|---|---|---|---|---|\n");
            for (name, sum, cpu, redirect, pass) in [
                (
                    "without --sk-msg",
                    &s.off,
                    s.off_cpu_us_per_round_trip,
                    s.off_redirect,
                    s.off_pass,
                ),
                (
                    "with --sk-msg",
                    &s.on,
                    s.on_cpu_us_per_round_trip,
                    s.on_redirect,
                    s.on_pass,
                ),
            ] {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} + {:.1} | {redirect} | {pass} |",
                    sum.count, sum.p50_us, sum.p99_us, sum.mean_us, cpu.0, cpu.1
                );
            }
            let _ = writeln!(
                md,
                "| **on/off** | | **{:.2}×** | **{:.2}×** | {:.2}× | | | |",
                s.ratio.p50, s.ratio.p99, s.ratio.mean
            );
            let _ = writeln!(md, "\n{}\n\n**Verdict: {}**", s.explanation, s.verdict);
        }
    }
}

fn rtt_interpretation(rows: &[RttRow]) -> String {
    let idle: Vec<&RttRow> = rows.iter().filter(|r| !r.congested).collect();
    let busy: Vec<&RttRow> = rows.iter().filter(|r| r.congested).collect();
    let (Some(idle), Some(busy)) = (idle.first(), busy.first()) else {
        return "The kernel's srtt is the smoothed RTT of the measured connections; userspace numbers are medians.".into();
    };
    let separates = busy.kernel_srtt_us > idle.kernel_srtt_us * 2.0;
    format!(
        "Kernel srtt {} the congested pod. Idle: kernel {:.0} µs vs userspace {:.0} (connect) / {:.0} (HTTP) µs: userspace adds syscalls and wake-ups. Congested: kernel {:.0} µs vs {:.0} / {:.0} µs ({:.2}× / {:.2}×): all see the tbf queue, but srtt is an EWMA (7/8 old + 1/8 new) over the agent's scrapes and the probe's connections while userspace reports medians of fresh samples. The kernel figure costs no extra packets or syscalls.",
        if separates {
            "separates"
        } else {
            "does NOT clearly separate"
        },
        idle.kernel_srtt_us,
        idle.user_connect.p50_us,
        idle.user_http.p50_us,
        busy.kernel_srtt_us,
        busy.user_connect.p50_us,
        busy.user_http.p50_us,
        busy.kernel_vs_connect_p50,
        busy.kernel_vs_http_p50,
    )
}
