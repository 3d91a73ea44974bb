//! The bench report: JSON for machines, markdown for people.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use crate::stats::{Summary, ms};

#[derive(Debug, Default, Serialize)]
pub struct OverheadRow {
    pub case: String,
    pub body_bytes: usize,
    pub concurrency: usize,
    pub direct: Summary,
    pub proxy: Summary,
    pub steer: Summary,
    pub agent_user_us_per_decision: f64,
    pub agent_sys_us_per_decision: f64,
    /// The mock engine's CPU per request on the same run: a yardstick for
    /// what one HTTP exchange costs on this machine.
    pub engine_cpu_us_per_request: f64,
}

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
    pub overhead: Vec<OverheadRow>,
    pub quality_workload: String,
    pub quality: Vec<QualityRow>,
}

impl Report {
    pub fn write(&self) -> Result<()> {
        let dir = crate::root().join("target/bench");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bench.json"), serde_json::to_string_pretty(self)?)?;
        let table = self.markdown();
        std::fs::write(dir.join("bench.md"), &table)?;
        println!("{table}");
        println!("written: {}/bench.json, bench.md", dir.display());
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut md = String::from("## Decision overhead (latency per request, µs)\n\n");
        md.push_str("| case | direct p50 | proxy p50 | steer p50 | **agent-added p50** | proxy p99 | steer p99 | **agent-added p99** | steer mean − proxy mean | agent CPU µs/decision (user + sys) | engine CPU µs/request |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.overhead {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | **{:.0}** | {:.0} | {:.0} | **{:.0}** | {:.0} | {:.0} + {:.0} | {:.0} |",
                r.case,
                r.direct.p50_us,
                r.proxy.p50_us,
                r.steer.p50_us,
                r.steer.p50_us - r.proxy.p50_us,
                r.proxy.p99_us,
                r.steer.p99_us,
                r.steer.p99_us - r.proxy.p99_us,
                r.steer.mean_us - r.proxy.mean_us,
                r.agent_user_us_per_decision,
                r.agent_sys_us_per_decision,
                r.engine_cpu_us_per_request,
            );
        }
        md.push_str("\ndirect = client → engine; proxy = client → Envoy stand-in → engine (no ext_proc); steer = client → stand-in ⇄ steer-agent (ext_proc) → engine. Targets: agent-added p50 ≤ 100 µs, p99 ≤ 1 ms at 4 KiB; ≤ 5 ms mean at 220 KB/c150; ≤ 25 µs CPU per decision.\n");
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
        md.push_str("\nTarget: prefix-cache TTFT ≤ 1.2× oracle (reference on this machine: sglang-router cache_aware 2.9×, vllm-router cache_aware 1.27×, random 5.8–7×).\n");
        md
    }
}
