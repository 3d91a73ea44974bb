//! Faulty engines: dead pods and endless `/metrics` answers must cost the
//! agent neither memory nor a busy core, and must never reach clients.

mod common;

use std::time::Duration;

use steer_e2e::{Client, Stack, metric_value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `n` loopback ports nobody listens on (bound once, then released).
fn closed_ports(n: usize) -> Vec<String> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

async fn scrape_failures(stack: &Stack) -> f64 {
    let m = Client::default().metrics(stack.metrics()).await.unwrap();
    metric_value(&m, "steer_errors_total", &[("reason", "scrape_failed")]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pods_are_scraped_with_back_off() {
    let dead = closed_ports(20);
    let mut opts = common::opts(&["m"], "least-request");
    opts.agent_args = vec!["--pool".into(), format!("dead={}", dead.join(","))];
    let stack = Stack::start(opts).await.unwrap();
    let start = scrape_failures(&stack).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed = scrape_failures(&stack).await - start;
    // Without back-off: 20 pods every 50 ms = ~1,200 failed connects in 3 s.
    assert!(failed < 400.0, "{failed} failed scrapes in 3 s");
    assert!(failed >= 20.0, "dead pods are still retried: {failed}");
    // The healthy model is served meanwhile; the dead one is a clean 503.
    let client = Client::default();
    assert_eq!(
        client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
        200
    );
    let reply = client.chat(stack.gateway(), "dead", &[]).await.unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json().unwrap()["error"]["code"], "no_ready_endpoint");
    common::assert_idle(&stack).await;
}

/// An "engine" whose `/metrics` answer never ends (64 KiB chunks for at
/// most 20 s per connection).
async fn endless_metrics_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if conn.read(&mut buf).await.is_err() {
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let line = "vllm:num_requests_waiting{model_name=\"m\"} 0\n".repeat(1500);
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while tokio::time::Instant::now() < deadline {
                    if conn.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_metrics_body_is_cut_off_and_the_pod_leaves_rotation() {
    let flood = endless_metrics_server().await;
    let mut opts = common::opts(&["m"], "least-request");
    opts.agent_args = vec!["--pool".into(), format!("flood={flood}")];
    let stack = Stack::start(opts).await.unwrap();
    let pid = stack.agent.pid().unwrap();
    let client = Client::default();
    let pod = flood.to_string();
    assert!(
        common::eventually(10, || async {
            let m = client.metrics(stack.metrics()).await.unwrap();
            metric_value(&m, "steer_pod_ready", &[("pod", &pod)]) == Some(0.0)
        })
        .await,
        "the flooding pod leaves rotation"
    );
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        peak < 100 << 20,
        "agent RSS {} MiB while a pod floods /metrics",
        peak >> 20
    );
    assert_eq!(
        client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
        200
    );
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_crash_and_restart_behind_the_same_envoy() {
    let mut stack = common::stack(&["m", "m"], "round-robin").await;
    let client = Client::default();
    let envoy_pid = stack.envoy.proc.pid();
    for _ in 0..10 {
        assert_eq!(
            client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
            200
        );
    }
    stack.agent.sigkill().await;
    // While it is down every request is a clean OpenAI-style 500, never a hang.
    let mut errors = 0;
    for _ in 0..10 {
        let reply = client.chat(stack.gateway(), "m", &[]).await.unwrap();
        assert_eq!(reply.status, 500, "{}", reply.text());
        assert_eq!(
            reply.json().unwrap()["error"]["code"],
            "routing_unavailable"
        );
        errors += 1;
    }
    stack.restart_agent().await.unwrap();
    // Envoy reconnects by itself: no Envoy restart.
    let started = std::time::Instant::now();
    assert!(
        common::eventually(10, || async {
            client.chat(stack.gateway(), "m", &[]).await.unwrap().status == 200
        })
        .await,
        "routing resumes after the agent restarts"
    );
    eprintln!(
        "agent down: {errors} requests answered 500 routing_unavailable; routing back {:?} after restart",
        started.elapsed()
    );
    assert_eq!(stack.envoy.proc.pid(), envoy_pid);
    for _ in 0..10 {
        assert_eq!(
            client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
            200
        );
    }
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_stream_ends_that_stream_and_releases_the_pod() {
    let mut stack = Stack::start(common::slow_opts(2)).await.unwrap();
    let client = Client::default();
    let streams = common::spawn_streams(&stack, 4, 100);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let dead = stack.engines.remove(0);
    dead.kill().await;
    let mut cut = 0;
    for s in streams {
        match s.await.unwrap() {
            // The survivor's streams complete; the dead engine's end early.
            Ok(reply) if reply.text().trim_end().ends_with("data: [DONE]") => {}
            _ => cut += 1,
        }
    }
    assert!(
        (1..=2).contains(&cut),
        "{cut} streams cut (two were on the dead engine)"
    );
    // New requests reach the survivor once the dead pod left rotation.
    assert!(
        common::eventually(10, || async {
            let reply = client.chat(stack.gateway(), "m", &[]).await.unwrap();
            reply.status == 200
        })
        .await
    );
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_garbage_config_keeps_the_last_good_one() {
    let stack = common::stack(&["m"], "least-request").await;
    let client = Client::default();
    let good = std::fs::read(&stack.config).unwrap();
    std::fs::remove_file(&stack.config).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
        200
    );
    std::fs::write(&stack.config, [0xff, 0xfe, 0x00, b'{', b'\n']).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
        200
    );
    std::fs::write(&stack.config, good).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
        200
    );
    common::assert_idle(&stack).await;
}

/// Defect: for the few hundred milliseconds until scrapes noticed a dead
/// engine, least-request sent every new request to it (its in-flight count
/// stays 0 because each request fails at once). A failed upstream response
/// now takes the pod out at once, until a scrape succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_just_killed_engine_stops_attracting_least_request_traffic() {
    let mut opts = common::opts(&["m", "m", "m", "m"], "least-request");
    // Scrapes far apart: the window in which only the response path can tell.
    opts.extra_config =
        "scrape:\n  interval_ms: 2000\n  timeout_ms: 300\n  unhealthy_after: 2\n".into();
    let mut stack = Stack::start(opts).await.unwrap();
    let client = Client::default();
    for _ in 0..8 {
        assert_eq!(
            client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
            200
        );
    }
    let dead = stack.engines.remove(0);
    let dead_addr = dead.addr().to_string();
    dead.kill().await;
    let mut failed = Vec::new();
    for _ in 0..14 {
        let reply = client.chat(stack.gateway(), "m", &[]).await.unwrap();
        if reply.status != 200 {
            failed.push((reply.status, reply.text()));
        } else {
            assert_ne!(reply.header("target-pod"), Some(dead_addr.as_str()));
        }
    }
    assert!(
        failed.len() <= 1,
        "only the request that found the engine dead may fail: {failed:?}"
    );
    let metrics = client.metrics(stack.metrics()).await.unwrap();
    assert_eq!(
        metric_value(&metrics, "steer_pod_ready", &[("pod", &dead_addr)]),
        Some(0.0),
        "{metrics}"
    );
    common::assert_idle(&stack).await;
}
