//! `cargo xtask demo`: the whole decision path on one laptop, through real
//! Envoy running the shipped `deploy/envoy/envoy.yaml`.

use std::time::Duration;

use anyhow::Result;
use steer_e2e::{Client, Stack, StackOptions, metric_value};

use crate::kernel_demo::KernelDemo;
use crate::stats::{hit_rate, ms, per_engine, summarize};
use crate::workload::{self, Shape};

const STRATEGIES: [&str; 6] = [
    "random",
    "round-robin",
    "least-request",
    "least-kv-cache",
    "session-affinity",
    "prefix-cache",
];

pub fn run(keep_running: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::select! {
            result = demo(keep_running) => result,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ninterrupted: stopping engines, agent and Envoy");
                Ok(())
            }
        }
    })
    // Dropping the stack inside `demo` (or the cancelled future) kills every child.
}

async fn demo(keep_running: bool) -> Result<()> {
    crate::setup::run()?;
    eprintln!("building release binaries (first run takes a few minutes)...");
    steer_e2e::ensure_built("release")?;
    // Realistic-ish engine: 50 us per uncached prompt token, 1 ms per output token.
    let engine_args: Vec<String> = steer_e2e::engine_args(50, 1000, 8);
    let ports = port_pair_free(9002, 9090).then_some((9002, 9090));
    let kernel = KernelDemo::prepare();
    let mut options = StackOptions {
        profile: "release",
        engines: (0..4)
            .map(|_| ("qwen,llama".to_owned(), engine_args.clone()))
            .collect(),
        default_strategy: "prefix-cache".into(),
        agent_ports: ports,
        ..Default::default()
    };
    if let Some(k) = &kernel {
        k.configure(&mut options);
    }
    let stack = Stack::start(options).await?;
    println!(
        "Steer demo: 4 mock vLLM engines (models qwen, llama), steer-agent, Envoy {} — all on loopback",
        stack.envoy.version
    );
    for (i, e) in stack.engines.iter().enumerate() {
        println!("  engine-{i}  http://{}", e.addr());
    }
    println!(
        "  agent     ext_proc grpc://{}  metrics http://{}",
        stack.ext_proc(),
        stack.metrics()
    );
    println!(
        "  envoy     http://{}  (OpenAI API; try: curl http://{}/v1/models)",
        stack.gateway(),
        stack.gateway()
    );
    println!(
        "            admin http://{}  (curl http://{}/stats | grep ext_proc)  config {}\n",
        stack.envoy.admin,
        stack.envoy.admin,
        stack.envoy.config_file.display()
    );

    let client = Client::default();
    let shape = Shape {
        groups: 8,
        per_group: 6,
        prefix_bytes: 6000,
        max_tokens: 8,
    };
    println!(
        "Workload per strategy: {} requests, 8 tenants sharing ~1500-token system prompts, half streaming, 2 models, concurrency 8\n",
        shape.groups * shape.per_group
    );
    println!(
        "{:<17} {:>6} {:>10} {:>10} {:>10} {:>10}  requests per engine",
        "strategy", "ok", "hit rate", "mean ms", "p99 ms", "TTFT ms"
    );
    for strategy in STRATEGIES {
        let jobs = workload::shared_prefix(shape, &["qwen", "llama"], strategy);
        let headers = [("routing-strategy", strategy.to_owned())];
        let outcomes = workload::run(&client, stack.gateway(), &jobs, 8, &headers, None).await?;
        let ok = outcomes.iter().filter(|o| o.status == 200).count();
        let total = summarize(outcomes.iter().map(|o| o.total));
        let ttft = summarize(outcomes.iter().map(|o| o.ttft));
        let spread: Vec<String> = per_engine(&outcomes)
            .into_iter()
            .map(|(e, n)| format!("{e}:{n}"))
            .collect();
        println!(
            "{:<17} {:>6} {:>9.0}% {:>10} {:>10} {:>10}  {}",
            strategy,
            format!("{ok}/{}", outcomes.len()),
            hit_rate(&outcomes) * 100.0,
            ms(total.mean_us),
            ms(total.p99_us),
            ms(ttft.mean_us),
            spread.join(" ")
        );
    }
    let metrics = client.get(stack.metrics(), "/metrics").await?.text();
    let decisions =
        metric_value(&metrics, "steer_decision_duration_seconds_count", &[]).unwrap_or(0.0);
    let decision_sum =
        metric_value(&metrics, "steer_decision_duration_seconds_sum", &[]).unwrap_or(0.0);
    println!(
        "\nagent decision time (parse + route): mean {:.1} us over {decisions} decisions",
        decision_sum / decisions.max(1.0) * 1e6
    );
    let stats = stack.envoy.stats().await?;
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    let streams = stat("http.openai.ext_proc.streams_started");
    println!(
        "Envoy {}: {streams} routing streams (one wait each: {:.1} messages sent per request, all answered when the body ends), \
         {} upstream requests",
        stack.envoy.version,
        stat("http.openai.ext_proc.stream_msgs_sent") as f64 / streams.max(1) as f64,
        stat("cluster.engine_pods.upstream_rq_total"),
    );
    // The engines' counters as of the agent's last scrape.
    let total = |name: &str| steer_e2e::metric_sum(&metrics, name);
    println!(
        "usage from the engines' own counters (steer_pod_engine_*_tokens_total, per pod and model): \
         {:.0} prompt, {:.0} generated tokens",
        total("steer_pod_engine_prompt_tokens_total"),
        total("steer_pod_engine_generation_tokens_total"),
    );
    println!("\nWhere to look:");
    println!(
        "  curl -s http://{}/metrics | grep ^steer_     # decisions, latency, errors, per-pod state",
        stack.metrics()
    );
    println!(
        "  curl -s http://{}/readyz                      # datapath mode (kernel / header-only), pools",
        stack.metrics()
    );
    println!(
        "  curl -s http://{}/v1/chat/completions -H 'routing-strategy: prefix-cache' \\\n       -d '{{\"model\":\"qwen\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}' -i",
        stack.gateway()
    );
    println!(
        "  curl -s http://{}/stats | grep -E 'ext_proc|engine_pods.upstream_rq_[0-9]'   # Envoy's own counters",
        stack.envoy.admin
    );
    if let Some(k) = &kernel {
        k.show(&stack, &client).await?;
    }
    if keep_running {
        println!("\nRunning until Ctrl-C...");
        std::future::pending::<()>().await;
    }
    // SIGTERM lets the agent detach its programs and remove its pins (--unpin).
    stack.shutdown().await;
    if let Some(k) = kernel {
        k.cleanup();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!("\nstopped engines, agent and Envoy.");
    Ok(())
}

fn port_pair_free(a: u16, b: u16) -> bool {
    [a, b]
        .iter()
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}
