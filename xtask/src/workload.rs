//! Shared-prefix chat workloads and their concurrent execution, used by the
//! demo and the bench.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use steer_e2e::Client;
use tokio::sync::Semaphore;

#[derive(Clone, Debug)]
pub struct Job {
    pub group: usize,
    pub body: String,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: u16,
    pub engine: String,
    pub ttft: Duration,
    pub total: Duration,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub groups: usize,
    pub per_group: usize,
    /// Bytes of the shared system prompt (about 4 bytes per token).
    pub prefix_bytes: usize,
    pub max_tokens: u32,
}

/// `groups` families of requests that share a long system prompt, in
/// round-robin order over the groups so families interleave as in real
/// traffic. `salt` makes prompts unique per run so caches start cold.
pub fn shared_prefix(shape: Shape, models: &[&str], salt: &str) -> Vec<Job> {
    let mut jobs = Vec::new();
    for i in 0..shape.per_group {
        for group in 0..shape.groups {
            let model = models[group % models.len()];
            let seed =
                format!("[{salt}] Tenant {group} instructions: follow policy section {group}. ");
            let system: String = seed.repeat(shape.prefix_bytes / seed.len() + 1);
            let stream = (i + group) % 2 == 0;
            let mut body = serde_json::json!({
                "model": model,
                "messages": [
                    {"role": "system", "content": &system[..shape.prefix_bytes]},
                    {"role": "user", "content": format!("Question {i} for tenant {group}?")},
                ],
                "stream": stream,
                "max_tokens": shape.max_tokens,
            });
            // stream_options is only valid with streaming (OpenAI, sglang-router).
            if stream {
                body["stream_options"] = serde_json::json!({"include_usage": true});
            }
            let body = body.to_string();
            jobs.push(Job { group, body });
        }
    }
    jobs
}

/// Where one job goes instead of the gateway, and a header of its own (the
/// oracle names its pod this way).
pub type Route<'a> = &'a (dyn Fn(&Job) -> (SocketAddr, Option<(&'static str, String)>) + Sync);

/// Sends every job through `gateway` with at most `concurrency` in flight,
/// or where `route` says.
pub async fn run(
    client: &Client,
    gateway: SocketAddr,
    jobs: &[Job],
    concurrency: usize,
    headers: &[(&'static str, String)],
    route: Option<Route<'_>>,
) -> anyhow::Result<Vec<Outcome>> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(jobs.len());
    for job in jobs {
        let permit = permits.clone().acquire_owned().await?;
        let client = client.clone();
        let job = job.clone();
        let (addr, own) = route.map_or((gateway, None), |r| r(&job));
        let mut headers = headers.to_vec();
        headers.extend(own);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let session = format!("tenant-{}", job.group);
            // Every request carries its tenant's session id; only the
            // session-affinity strategy looks at it.
            let mut h: Vec<(&str, &str)> = vec![("x-session-id", &session)];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            let reply = client
                .post(addr, "/v1/chat/completions", &h, job.body.clone())
                .await?;
            let number = |name: &str| reply.header(name).and_then(|v| v.parse().ok()).unwrap_or(0);
            Ok::<_, anyhow::Error>(Outcome {
                status: reply.status,
                engine: reply.header("x-mock-engine").unwrap_or("-").to_owned(),
                ttft: reply.first_byte_after,
                total: reply.total,
                prompt_tokens: number("x-prompt-tokens"),
                cached_tokens: number("x-prefix-cached-tokens"),
            })
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await??);
    }
    Ok(out)
}

/// A one-token chat request for `model`.
pub fn tiny_chat(model: &str) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 1,
    })
    .to_string()
}
