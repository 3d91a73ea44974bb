//! (a) latency added by the decision path, (b) agent CPU per decision.
//!
//! Three paths to the same zero-delay engine, measured back to back:
//! direct (client → engine), proxy (client → stand-in → engine, ext_proc
//! bypassed) and steer (client → stand-in ⇄ agent → engine). The agent's
//! share is steer − proxy: what Envoy + ext_proc to Steer costs over Envoy
//! alone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use steer_e2e::{Client, Proc, Stack, StackOptions, binary_dir, chat_body};

use super::BenchArgs;
use super::report::{OverheadRow, Report};
use crate::stats::summarize;

struct Case {
    name: &'static str,
    body_bytes: usize,
    concurrency: usize,
    requests: usize,
}

pub async fn run(args: BenchArgs, report: &mut Report) -> Result<()> {
    let scale = if args.quick { 5 } else { 1 };
    let cases = [
        Case {
            name: "4 KiB, c1",
            body_bytes: 4 << 10,
            concurrency: 1,
            requests: 2000 / scale,
        },
        Case {
            name: "4 KiB, c256",
            body_bytes: 4 << 10,
            concurrency: 256,
            requests: 10_240 / scale,
        },
        Case {
            name: "220 KB, c150",
            body_bytes: 220_000,
            concurrency: 150,
            requests: 3000 / scale,
        },
    ];
    let fast: Vec<String> = steer_e2e::engine_args(0, 0, 1024);
    let stack = Stack::start(StackOptions {
        profile: "release",
        engines: vec![("m".into(), fast)],
        default_strategy: "least-request".into(),
        standin_args: Vec::new(),
        agent_args: Vec::new(),
        agent_ports: None,
        ..Default::default()
    })
    .await?;
    let engine = stack.engines[0].addr();
    // The same stand-in binary with ext_proc switched off, forwarding to the engine.
    let proxy = Proc::spawn(
        &binary_dir("release").join("envoy-standin"),
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--static-upstream".into(),
            engine.to_string(),
        ],
        "listening on",
    )
    .await?;
    let client = Client::default();
    let agent_pid = stack.agent.pid().unwrap_or(0);
    let engine_pid = stack.engines[0].pid().unwrap_or(0);

    for case in cases {
        let body = sized_body(case.body_bytes);
        let mut row = OverheadRow {
            case: case.name.into(),
            body_bytes: body.len(),
            concurrency: case.concurrency,
            ..Default::default()
        };
        // Warm connections and caches on every path.
        for addr in [engine, proxy.addr(), stack.gateway()] {
            drive(&client, addr, &body, case.concurrency, case.concurrency * 2).await?;
        }
        let (user_before, sys_before) = cpu_time(agent_pid);
        let engine_before = cpu_time(engine_pid);
        row.steer = drive(
            &client,
            stack.gateway(),
            &body,
            case.concurrency,
            case.requests,
        )
        .await?;
        let (user, sys) = cpu_time(agent_pid);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / case.requests as f64;
        row.agent_user_us_per_decision = per(user.saturating_sub(user_before));
        row.agent_sys_us_per_decision = per(sys.saturating_sub(sys_before));
        let engine_after = cpu_time(engine_pid);
        row.engine_cpu_us_per_request = per(
            (engine_after.0 + engine_after.1).saturating_sub(engine_before.0 + engine_before.1)
        );
        row.proxy = drive(
            &client,
            proxy.addr(),
            &body,
            case.concurrency,
            case.requests,
        )
        .await?;
        row.direct = drive(&client, engine, &body, case.concurrency, case.requests).await?;
        eprintln!("  {}: done", case.name);
        report.overhead.push(row);
    }
    Ok(())
}

/// A chat body of about `bytes` bytes (the prompt dominates).
fn sized_body(bytes: usize) -> String {
    let base = chat_body("m", "", false, 1).len();
    let filler = "The quick brown fox jumps over the lazy dog. ";
    let prompt: String = filler.repeat(bytes.saturating_sub(base) / filler.len() + 1);
    chat_body("m", &prompt[..bytes.saturating_sub(base)], false, 1)
}

/// `requests` POSTs at `concurrency`, bounded by 120 s; returns latency stats.
async fn drive(
    client: &Client,
    addr: SocketAddr,
    body: &str,
    concurrency: usize,
    requests: usize,
) -> Result<crate::stats::Summary> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = bytes::Bytes::from(body.to_owned());
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, body) = (client.clone(), next.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests
                && Instant::now() < deadline
            {
                let reply = client
                    .post(addr, "/v1/chat/completions", &[], body.clone())
                    .await?;
                anyhow::ensure!(
                    reply.status == 200,
                    "status {}: {}",
                    reply.status,
                    reply.text()
                );
                samples.push(reply.total);
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for w in workers {
        all.extend(w.await??);
    }
    Ok(summarize(all))
}

/// (user, system) CPU time of a process, from /proc.
fn cpu_time(pid: u32) -> (Duration, Duration) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (Duration::ZERO, Duration::ZERO);
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let secs = |t: u64| Duration::from_secs_f64(t as f64 / hz);
    (secs(ticks(11)), secs(ticks(12)))
}
