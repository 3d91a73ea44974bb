//! Latency, throughput and CPU per request on every path of [`super::paths`],
//! rounds interleaved (path A, B, C, … then again, at least three times) so a
//! drift of this shared machine hits every path alike; each figure is the
//! median over rounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use steer_e2e::{Client, chat_body};

use super::BenchArgs;
use super::paths::{self, Paths};
use super::report::Report;

struct Case {
    name: &'static str,
    body_bytes: usize,
    concurrency: usize,
    /// Requests per path per round.
    requests: usize,
    /// Streamed response of this many tokens (0: a one-token JSON reply).
    stream_tokens: u32,
}

/// One path in one case: medians over rounds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PathResult {
    pub path: String,
    pub rounds: usize,
    pub requests: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub req_per_s: f64,
    /// Envoy's CPU (all threads) per completed request.
    pub envoy_cpu_us_per_request: f64,
    /// The ext_proc server's (agent or no-op) CPU per completed request.
    pub ext_proc_cpu_us_per_request: f64,
    /// Streaming case: time to first token, gap between chunks, chunks per
    /// response, and the ext_proc server's CPU per response chunk.
    pub ttft_p50_us: f64,
    pub chunk_gap_us: f64,
    pub chunks_per_response: f64,
    pub ext_proc_cpu_us_per_chunk: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub body_bytes: usize,
    pub concurrency: usize,
    pub stream_tokens: u32,
    pub paths: Vec<PathResult>,
}

impl CaseResult {
    pub fn path(&self, name: &str) -> Option<&PathResult> {
        self.paths.iter().find(|p| p.path == name)
    }
}

/// What one round of one path measured.
#[derive(Default)]
struct Round {
    latencies: Vec<Duration>,
    ttfts: Vec<Duration>,
    gaps_us: Vec<f64>,
    chunks: usize,
    wall: Duration,
    envoy_ns: u64,
    ext_proc_ns: u64,
}

pub async fn run(args: &BenchArgs, report: &mut Report) -> Result<()> {
    let scale = if args.quick { 5 } else { 1 };
    let rounds = args.rounds.max(3);
    let unary = [
        ("4 KiB, c1", 4 << 10, 1, 600),
        ("4 KiB, c64", 4 << 10, 64, 3200),
        ("4 KiB, c256", 4 << 10, 256, 5120),
        ("220 KB, c150", 220_000, 150, 900),
    ]
    .map(|(name, body_bytes, concurrency, requests)| Case {
        name,
        body_bytes,
        concurrency,
        requests: requests / scale,
        stream_tokens: 0,
    });
    let wanted_case = |case: &Case| {
        args.case
            .as_ref()
            .is_none_or(|c| case.name.contains(c.as_str()))
    };
    let wanted_path = |path: &str| args.path.is_empty() || args.path.iter().any(|p| p == path);
    let fast = steer_e2e::engine_args(0, 0, 1024);
    let set = paths::start(fast, &wanted_path).await?;
    report.envoy_version = set.envoy_version.clone();
    for case in unary.iter().filter(|c| wanted_case(c)) {
        report.overhead.push(measure(&set, case, rounds).await?);
        eprintln!("  overhead {}: done", case.name);
    }
    drop(set);
    // Streaming: engines that decode 2 ms per token, 256 tokens, 32 streams.
    let streaming = Case {
        name: "stream 256 tokens, c32",
        body_bytes: 1 << 10,
        concurrency: 32,
        requests: (128 / scale).max(32),
        stream_tokens: 256,
    };
    if !wanted_case(&streaming) {
        return Ok(());
    }
    let set = paths::start(steer_e2e::engine_args(0, 2000, 1024), &wanted_path).await?;
    report
        .overhead
        .push(measure(&set, &streaming, rounds).await?);
    eprintln!("  overhead {}: done", streaming.name);
    Ok(())
}

async fn measure(set: &Paths, case: &Case, rounds: usize) -> Result<CaseResult> {
    let client = Client::default();
    let body = sized_body(case.body_bytes, case.stream_tokens);
    // Warm every path's connections and caches.
    for path in &set.paths {
        let warm = case.concurrency * 2;
        drive(&client, path, &body, case.concurrency, warm).await?;
    }
    let mut per_path: Vec<Vec<Round>> = set.paths.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (path, results) in set.paths.iter().zip(&mut per_path) {
            let envoy = paths::cpu_ns(path.envoy_pid);
            let ext_proc = paths::cpu_ns(path.ext_proc_pid);
            let mut round = drive(&client, path, &body, case.concurrency, case.requests).await?;
            round.envoy_ns = paths::cpu_ns(path.envoy_pid).saturating_sub(envoy);
            round.ext_proc_ns = paths::cpu_ns(path.ext_proc_pid).saturating_sub(ext_proc);
            results.push(round);
        }
    }
    let paths = set
        .paths
        .iter()
        .zip(per_path)
        .map(|(path, rounds)| summarize(path.name, &rounds))
        .collect();
    Ok(CaseResult {
        case: case.name.into(),
        body_bytes: body.len(),
        concurrency: case.concurrency,
        stream_tokens: case.stream_tokens,
        paths,
    })
}

fn summarize(name: &str, rounds: &[Round]) -> PathResult {
    let per_round = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let stats = |r: &Round| crate::stats::summarize(r.latencies.iter().copied());
    let n = |r: &Round| r.latencies.len().max(1) as f64;
    PathResult {
        path: name.into(),
        rounds: rounds.len(),
        requests: rounds.iter().map(|r| r.latencies.len()).sum(),
        p50_us: per_round(&|r| stats(r).p50_us),
        p99_us: per_round(&|r| stats(r).p99_us),
        mean_us: per_round(&|r| stats(r).mean_us),
        req_per_s: per_round(&|r| r.latencies.len() as f64 / r.wall.as_secs_f64().max(1e-9)),
        envoy_cpu_us_per_request: per_round(&|r| r.envoy_ns as f64 / 1e3 / n(r)),
        ext_proc_cpu_us_per_request: per_round(&|r| r.ext_proc_ns as f64 / 1e3 / n(r)),
        ttft_p50_us: per_round(&|r| crate::stats::summarize(r.ttfts.iter().copied()).p50_us),
        chunk_gap_us: per_round(&|r| median(r.gaps_us.clone())),
        chunks_per_response: per_round(&|r| r.chunks as f64 / n(r)),
        ext_proc_cpu_us_per_chunk: per_round(&|r| {
            r.ext_proc_ns as f64 / 1e3 / r.chunks.max(1) as f64
        }),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A chat body of about `bytes` bytes (the prompt dominates, with escapes); streamed with
/// `stream_tokens` tokens when that is not 0.
fn sized_body(bytes: usize, stream_tokens: u32) -> String {
    let (stream, tokens) = (stream_tokens > 0, stream_tokens.max(1));
    let base = chat_body("m", "", stream, tokens).len();
    // Quotes and newlines, like real chat prompts: JSON escapes the parser
    // must unescape (a copy per escaped string).
    let filler = "The \"quick\" brown fox jumps over the lazy dog.\n";
    let prompt: String = filler.repeat(bytes.saturating_sub(base) / filler.len() + 1);
    chat_body("m", &prompt[..bytes.saturating_sub(base)], stream, tokens)
}

/// `requests` POSTs at `concurrency` rotating over `targets`, bounded by
/// 120 s; every reply must be a 200.
async fn drive(
    client: &Client,
    path: &paths::Path,
    body: &str,
    concurrency: usize,
    requests: usize,
) -> Result<Round> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let next = Arc::new(AtomicUsize::new(0));
    let body = bytes::Bytes::from(body.to_owned());
    let targets: Arc<[SocketAddr]> = path.targets.as_slice().into();
    let headers = path.headers;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, body, targets) =
            (client.clone(), next.clone(), body.clone(), targets.clone());
        workers.push(tokio::spawn(async move {
            let mut round = Round::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() >= deadline {
                    break;
                }
                let target = targets[i % targets.len()];
                let reply = client
                    .post(target, "/v1/chat/completions", headers, body.clone())
                    .await?;
                anyhow::ensure!(
                    reply.status == 200,
                    "status {}: {}",
                    reply.status,
                    reply.text()
                );
                round.latencies.push(reply.total);
                round.ttfts.push(reply.first_byte_after);
                round.chunks += reply.frames;
                if reply.frames > 1 {
                    let streaming = reply.total.saturating_sub(reply.first_byte_after);
                    round
                        .gaps_us
                        .push(streaming.as_secs_f64() * 1e6 / (reply.frames - 1) as f64);
                }
            }
            Ok::<_, anyhow::Error>(round)
        }));
    }
    let mut all = Round::default();
    for w in workers {
        let r = w.await??;
        all.latencies.extend(r.latencies);
        all.ttfts.extend(r.ttfts);
        all.gaps_us.extend(r.gaps_us);
        all.chunks += r.chunks;
    }
    all.wall = started.elapsed();
    Ok(all)
}
