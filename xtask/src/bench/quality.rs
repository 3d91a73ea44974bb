//! (c) routing quality: TTFT and prefix hit rate per strategy on a
//! shared-prefix workload, against an oracle that always picks the warm pod
//! through the same shipped Envoy config (a no-op ext_proc server routes each
//! request to the pod the client names), and against the peer routers'
//! cache_aware policies on the same engines.

use anyhow::Result;
use steer_e2e::envoy::render;
use steer_e2e::{Client, DEFAULT_ENVOY, Envoy, EnvoyConfig, Stack, StackOptions};

use super::peers::{self, Kind};

use super::BenchArgs;
use super::report::{QualityRow, Report};
use crate::stats::{hit_rate, per_engine, summarize};
use crate::workload::{self, Shape};

/// The header the oracle names its pod in (read by `noop-extproc --pod-header`).
const ORACLE_HEADER: &str = "x-oracle-pod";

const STRATEGIES: [&str; 7] = [
    "random",
    "round-robin",
    "least-request",
    "session-affinity",
    "prefix-cache",
    "prefix-rendezvous",
    "prefix-cache:3,least-request:1",
];

pub async fn run(args: &BenchArgs, report: &mut Report) -> Result<()> {
    // 8 tenants sharing ~4000-token system prompts on 4 engines; prefill
    // 50 us per uncached token makes a cold prompt ~200 ms, a warm one ~1 ms.
    let shape = Shape {
        groups: 8,
        per_group: if args.quick { 6 } else { 16 },
        prefix_bytes: 16_000,
        max_tokens: 4,
    };
    let concurrency = 8;
    let engine_args: Vec<String> = steer_e2e::engine_args(50, 500, 4);
    let stack = Stack::start(StackOptions {
        profile: "release",
        engines: (0..4)
            .map(|_| ("m".to_owned(), engine_args.clone()))
            .collect(),
        default_strategy: "least-request".into(),
        ..Default::default()
    })
    .await?;
    let client = Client::default();
    let engines: Vec<_> = stack.engines.iter().map(|e| e.addr()).collect();

    let mut rows = Vec::new();
    // The oracle sends each tenant to "its" engine (perfect affinity) through
    // the shipped envoy.yaml, a no-op ext_proc server naming that pod.
    let noop = super::paths::spawn_noop(&engines, &["--pod-header", ORACLE_HEADER]).await?;
    let dir = std::env::temp_dir().join(format!("steer-quality-{}", std::process::id()));
    let config = EnvoyConfig::OneWait;
    let oracle_envoy = Envoy::start(
        DEFAULT_ENVOY,
        &render(config, noop.addr())?,
        &dir,
        &config.path(),
    )
    .await?;
    let jobs = workload::shared_prefix(shape, &["m"], "oracle");
    let oracle = |job: &workload::Job| {
        let pod = engines[job.group % engines.len()].to_string();
        (oracle_envoy.listener, Some((ORACLE_HEADER, pod)))
    };
    let outcomes = workload::run(
        &client,
        stack.gateway(),
        &jobs,
        concurrency,
        &[],
        Some(&oracle),
    )
    .await?;
    rows.push(row("oracle (warm pod, same Envoy)", &outcomes));
    drop(oracle_envoy);
    drop(noop);
    let _ = std::fs::remove_dir_all(&dir);
    for strategy in STRATEGIES {
        let jobs = workload::shared_prefix(shape, &["m"], strategy);
        let headers = [("routing-strategy", strategy.to_owned())];
        let outcomes =
            workload::run(&client, stack.gateway(), &jobs, concurrency, &headers, None).await?;
        rows.push(row(strategy, &outcomes));
        eprintln!("  quality {strategy}: done");
    }
    for kind in [Kind::Vllm, Kind::Sglang] {
        let peer = peers::start(kind, "cache_aware", &engines, "m").await?;
        let name = format!("{} cache_aware", kind.name());
        let jobs = workload::shared_prefix(shape, &["m"], &name);
        let outcomes = workload::run(&client, peer.addr, &jobs, concurrency, &[], None).await?;
        rows.push(row(&name, &outcomes));
        eprintln!("  quality {name}: done");
    }
    let oracle_ttft = rows[0].ttft.mean_us.max(1.0);
    for r in &mut rows {
        r.ttft_vs_oracle = r.ttft.mean_us / oracle_ttft;
    }
    report.quality = rows;
    report.quality_workload = format!(
        "{} tenants x {} requests, ~{} token shared system prompts, 4 engines (prefill 50 us/uncached token, decode 0.5 ms/token, 4 running slots), concurrency {}",
        shape.groups,
        shape.per_group,
        shape.prefix_bytes / 4,
        concurrency
    );
    Ok(())
}

fn row(name: &str, outcomes: &[workload::Outcome]) -> QualityRow {
    QualityRow {
        strategy: name.into(),
        ok: outcomes.iter().filter(|o| o.status == 200).count(),
        requests: outcomes.len(),
        ttft: summarize(outcomes.iter().map(|o| o.ttft)),
        hit_rate: hit_rate(outcomes),
        per_engine: per_engine(outcomes).into_values().collect(),
        ttft_vs_oracle: 0.0,
    }
}
