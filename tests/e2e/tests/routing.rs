//! Routing behaviour through stand-in + agent + mock engines.

mod common;

use std::collections::HashMap;

use steer_e2e::{Client, chat_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_model_and_sets_destination_headers() {
    let stack = common::stack(&["qwen", "qwen", "llama"], "round-robin").await;
    let client = Client::default();
    for _ in 0..6 {
        let reply = client
            .post(
                stack.gateway(),
                "/v1/chat/completions",
                &[],
                chat_body("llama", "hi", false, 2),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-mock-engine"), Some("engine-2"));
        let target = reply
            .header("target-pod")
            .expect("target-pod echoed on the response");
        assert_eq!(stack.engine_index(target), Some(2));
        // What the engine received, i.e. what "Envoy" forwarded.
        assert_eq!(reply.header("x-echo-target-pod"), Some(target));
        assert_eq!(
            reply.header("x-echo-x-gateway-destination-endpoint"),
            Some(target)
        );
        assert_eq!(reply.header("x-echo-x-gateway-model-name"), Some("llama"));
        assert!(
            reply
                .header("x-echo-x-request-id")
                .is_some_and(|id| id.len() >= 16)
        );
        assert_eq!(reply.json().unwrap()["model"], "llama");
        // Envoy's access log: the route was re-picked on X-Gateway-Model-Name
        // (clear_route_cache), the agent's envoy.lb metadata arrived, and the
        // request reached the pod the agent named.
        let id = reply.header("x-request-id").unwrap();
        let entry = stack.envoy.access_log_entry(id).await.expect("access log");
        assert_eq!(entry["route"], "llama", "{entry}");
        assert_eq!(entry["endpoint"], target, "{entry}");
        assert_eq!(entry["upstream"], target, "{entry}");
    }
    let reply = client
        .post(
            stack.gateway(),
            "/v1/chat/completions",
            &[("x-request-id", "client-chosen-id")],
            chat_body("qwen", "hi", false, 2),
        )
        .await
        .unwrap();
    assert!(matches!(
        reply.header("x-mock-engine"),
        Some("engine-0" | "engine-1")
    ));
    assert_eq!(
        reply.header("x-echo-x-request-id"),
        Some("client-chosen-id")
    );
    assert_eq!(reply.header("x-request-id"), Some("client-chosen-id"));
    let entry = stack
        .envoy
        .access_log_entry("client-chosen-id")
        .await
        .unwrap();
    assert_eq!(entry["route"], "qwen", "{entry}");
    common::assert_idle(&stack).await;
}

async fn engines_hit(
    stack: &steer_e2e::Stack,
    strategy: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let client = Client::default();
    let mut hits = HashMap::new();
    for i in 0..n {
        let mut h = vec![("routing-strategy", strategy)];
        h.extend_from_slice(headers);
        let reply = client
            .post(
                stack.gateway(),
                "/v1/chat/completions",
                &h,
                chat_body("m", &format!("q{i}"), false, 1),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-steer-strategy"), Some(strategy));
        *hits
            .entry(reply.header("x-mock-engine").unwrap().to_owned())
            .or_default() += 1;
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_random_and_session_affinity() {
    let stack = common::stack(&["m", "m", "m"], "least-request").await;
    let rr = engines_hit(&stack, "round-robin", 9, &[]).await;
    assert_eq!(rr.len(), 3, "{rr:?}");
    assert!(rr.values().all(|&n| n == 3), "round-robin is even: {rr:?}");

    let random = engines_hit(&stack, "random", 60, &[]).await;
    assert_eq!(random.len(), 3, "random reaches every pod: {random:?}");

    let sticky = engines_hit(&stack, "session-affinity", 10, &[("x-session-id", "alice")]).await;
    assert_eq!(sticky.len(), 1, "one session, one pod: {sticky:?}");
    let mut pods = std::collections::HashSet::new();
    for s in 0..30 {
        let session = format!("user-{s}");
        let hits = engines_hit(&stack, "session-affinity", 2, &[("x-session-id", &session)]).await;
        assert_eq!(hits.len(), 1, "{session}: {hits:?}");
        pods.extend(hits.into_keys());
    }
    assert_eq!(pods.len(), 3, "sessions spread over the pods");
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_sends_a_repeated_prefix_to_the_same_pod() {
    let stack = common::stack(&["m", "m", "m", "m"], "prefix-cache").await;
    let client = Client::default();
    let mut home: HashMap<usize, String> = HashMap::new();
    for round in 0..4 {
        for group in 0..6 {
            let system = format!("group {group} system prompt. ").repeat(200);
            let body = serde_json::json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": format!("question {round}")},
                ],
                "max_tokens": 1,
            })
            .to_string();
            let reply = client
                .post(stack.gateway(), "/v1/chat/completions", &[], body)
                .await
                .unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text());
            let engine = reply.header("x-mock-engine").unwrap().to_owned();
            let cached: u64 = reply
                .header("x-prefix-cached-tokens")
                .unwrap()
                .parse()
                .unwrap();
            match home.get(&group) {
                None => {
                    assert_eq!(round, 0);
                    home.insert(group, engine);
                }
                Some(first) => {
                    assert_eq!(&engine, first, "group {group} round {round} moved");
                    assert!(cached > 1000, "warm pod serves from cache: {cached}");
                }
            }
        }
    }
    let distinct: std::collections::HashSet<_> = home.values().collect();
    assert!(distinct.len() >= 2, "groups spread over pods: {home:?}");
    common::assert_idle(&stack).await;
}

/// Sends long streams round-robin until `count` of them are still running
/// (those on the fast pod finish at once, those on the slow pod 0 stay);
/// the handles abort them when dropped.
async fn hold_streams_on_slow_pod(
    stack: &steer_e2e::Stack,
    prompt: &str,
    count: usize,
) -> Vec<Held> {
    let client = Client::default();
    let mut held: Vec<Held> = Vec::new();
    for _ in 0..40 {
        if held.len() >= count {
            break;
        }
        let (client, gw, prompt) = (client.clone(), stack.gateway(), prompt.to_owned());
        held.push(Held(tokio::spawn(async move {
            let body = chat_body("m", &prompt, true, 1000);
            let _ = client
                .post(
                    gw,
                    "/v1/chat/completions",
                    &[("routing-strategy", "round-robin")],
                    body,
                )
                .await;
        })));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        held.retain(|t| !t.0.is_finished());
    }
    assert!(held.len() >= count, "could not occupy the slow pod");
    held
}

struct Held(tokio::task::JoinHandle<()>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_a_busy_pod() {
    // Engine 0 decodes slowly (20 ms per token): whatever lands there stays in flight.
    let mut opts = common::opts(&["m", "m"], "least-request");
    opts.engines[0].1 = [
        "--decode-us-per-token",
        "20000",
        "--prefill-us-per-token",
        "0",
    ]
    .map(String::from)
    .to_vec();
    let stack = steer_e2e::Stack::start(opts).await.unwrap();
    let held = hold_streams_on_slow_pod(&stack, "long", 3).await;
    let hits = engines_hit(&stack, "least-request", 10, &[]).await;
    assert_eq!(
        hits.get("engine-1"),
        Some(&10),
        "busy pod avoided: {hits:?}"
    );
    // Clients that hang up mid-stream release their pods.
    drop(held);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_kv_cache_avoids_a_pod_with_a_full_cache() {
    // Engine 0 has a tiny KV cache and decodes slowly (20 s for 1000 tokens, aborted
    // at the end): one long request fills it.
    let mut opts = common::opts(&["m", "m"], "least-kv-cache");
    opts.engines[0].1 = [
        "--decode-us-per-token",
        "20000",
        "--prefill-us-per-token",
        "0",
        "--kv-blocks-total",
        "64",
    ]
    .map(String::from)
    .to_vec();
    let stack = steer_e2e::Stack::start(opts).await.unwrap();
    let client = Client::default();
    let held = hold_streams_on_slow_pod(&stack, &"fill the cache ".repeat(200), 1).await;
    let engine0 = stack.engines[0].addr().to_string();
    let metrics = stack.metrics();
    assert!(
        common::eventually(5, || async {
            let m = client.metrics(metrics).await.unwrap();
            steer_e2e::metric_value(&m, "steer_pod_kv_cache_usage", &[("pod", &engine0)])
                .unwrap_or(0.0)
                > 0.5
        })
        .await,
        "scraped KV usage of the full pod"
    );
    let hits = engines_hit(&stack, "least-kv-cache", 10, &[]).await;
    assert_eq!(
        hits.get("engine-1"),
        Some(&10),
        "full-cache pod avoided: {hits:?}"
    );
    drop(held);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_routing_strategy_header_mixes_scorers() {
    let stack = common::stack(&["m", "m", "m"], "round-robin").await;
    let client = Client::default();
    let send = |strategy: &'static str, session: &'static str, prompt: String| {
        let client = client.clone();
        let gateway = stack.gateway();
        async move {
            let mut headers = vec![("routing-strategy", strategy)];
            if !session.is_empty() {
                headers.push(("x-session-id", session));
            }
            client
                .post(
                    gateway,
                    "/v1/chat/completions",
                    &headers,
                    chat_body("m", &prompt, false, 1),
                )
                .await
                .unwrap()
        }
    };
    // Session scorer alone: one session, one pod.
    let mut pods = std::collections::HashSet::new();
    for i in 0..6 {
        let reply = send("session-affinity:1", "alice", format!("q{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-steer-strategy"), Some("weighted"));
        pods.insert(reply.header("target-pod").unwrap().to_owned());
    }
    assert_eq!(pods.len(), 1, "{pods:?}");
    // Prefix (3×) over queue (1×): a repeated system prompt stays on its pod.
    let system = "You are the weighted-routing test assistant. ".repeat(60);
    let mut homes = std::collections::HashSet::new();
    for i in 0..6 {
        let reply = send(
            "prefix-cache:3,least-request:1",
            "",
            format!("{system}q{i}"),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        homes.insert(reply.header("target-pod").unwrap().to_owned());
    }
    assert_eq!(homes.len(), 1, "the shared prefix keeps one pod: {homes:?}");
    // A bad weight is the agent's 400, naming it.
    let reply = send("prefix-cache:lots", "", "x".into()).await;
    assert_eq!(reply.status, 400);
    let error = reply.json().unwrap();
    assert_eq!(
        error["error"]["code"], "invalid_routing_strategy",
        "{error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`lots`"),
        "{error}"
    );
    let metrics = client.metrics(stack.metrics()).await.unwrap();
    let weighted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("steer_decisions_total{") && l.contains("strategy=\"weighted\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(weighted, 12.0);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_profiles_from_the_config_route_by_default_and_by_header() {
    let mut opts = common::opts(&["m", "m", "m"], "sticky");
    opts.extra_config = "scheduler:\n  profiles:\n    sticky: { scorers: [{session-affinity: 1}] }\n    spread: { scorers: [{queue: 1}], picker: power-of-two }\n".into();
    let stack = steer_e2e::Stack::start(opts).await.unwrap();
    let client = Client::default();
    let mut pods = std::collections::HashSet::new();
    for i in 0..5 {
        let reply = client
            .post(
                stack.gateway(),
                "/v1/chat/completions",
                &[("x-session-id", "alice")],
                chat_body("m", &format!("q{i}"), false, 1),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-steer-strategy"), Some("sticky"));
        pods.insert(reply.header("target-pod").unwrap().to_owned());
    }
    assert_eq!(
        pods.len(),
        1,
        "the default profile keeps the session: {pods:?}"
    );
    for _ in 0..3 {
        let reply = client
            .post(
                stack.gateway(),
                "/v1/chat/completions",
                &[("routing-strategy", "spread")],
                chat_body("m", "x", false, 1),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-steer-strategy"), Some("spread"));
    }
    let metrics = client.metrics(stack.metrics()).await.unwrap();
    let count = |strategy: &str| -> f64 {
        let label = format!("strategy=\"{strategy}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with("steer_decisions_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!((count("sticky"), count("spread")), (5.0, 3.0), "{metrics}");
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_affinity_prefers_the_pod_running_the_adapter() {
    let mut opts = common::opts(&["base,sql-lora", "base,sql-lora"], "round-robin");
    opts.engines[0]
        .1
        .extend(["--max-lora", "1", "--lora-running", "other-lora"].map(String::from));
    opts.engines[1]
        .1
        .extend(["--max-lora", "1", "--lora-running", "sql-lora"].map(String::from));
    let stack = steer_e2e::Stack::start(opts).await.unwrap();
    let client = Client::default();
    let send = |model: &'static str, strategy: &'static str| {
        let client = client.clone();
        let gateway = stack.gateway();
        async move {
            let reply = client
                .post(
                    gateway,
                    "/v1/chat/completions",
                    &[("routing-strategy", strategy)],
                    chat_body(model, "select 1", false, 1),
                )
                .await
                .unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text());
            reply.header("x-mock-engine").unwrap().to_owned()
        }
    };
    // Until the first scrape every pod rates 0; after it, every request for
    // the adapter goes to the pod running it (bounded wait for the scrape).
    let mut in_a_row = 0;
    for _ in 0..200 {
        if send("sql-lora", "lora-affinity:2,least-request:1").await == "engine-1" {
            in_a_row += 1;
        } else {
            in_a_row = 0;
        }
        if in_a_row == 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        in_a_row, 8,
        "requests for sql-lora stay on the pod running it"
    );
    // The base model has no adapter anywhere: both pods rate 0 (no free
    // slot), and ties among idle pods spread at random (24 requests: all on
    // one pod has probability 2^-23).
    let mut engines = std::collections::HashSet::new();
    for _ in 0..24 {
        engines.insert(send("base", "lora-affinity,least-request").await);
    }
    assert_eq!(engines.len(), 2, "{engines:?}");
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agent_replicas_agree_on_prefix_rendezvous() {
    use steer_e2e::{DEFAULT_ENVOY, Envoy, EnvoyConfig, Proc, binary_dir};
    let stack = common::stack(&["m", "m", "m", "m"], "prefix-rendezvous").await;
    // A second replica: its own agent and Envoy, the same config and engines.
    let agent = binary_dir("debug").join("steer-agent");
    let args = steer_e2e::standalone_agent_args(&stack.config);
    let replica = Proc::spawn(&agent, &args, "steer-agent listening")
        .await
        .unwrap();
    let doc = steer_e2e::envoy::render(EnvoyConfig::OneWait, replica.addr()).unwrap();
    let dir = stack.dir.join("replica");
    let envoy = Envoy::start(DEFAULT_ENVOY, &doc, &dir, &EnvoyConfig::OneWait.path())
        .await
        .unwrap();
    let client = Client::default();
    let mut pods = std::collections::HashSet::new();
    for group in 0..12 {
        let prompt =
            format!("tenant {group} system prompt, long enough to fill blocks. ").repeat(30);
        let mut seen = Vec::new();
        for (i, gateway) in [
            stack.gateway(),
            envoy.listener,
            stack.gateway(),
            envoy.listener,
        ]
        .into_iter()
        .enumerate()
        {
            let reply = client
                .post(
                    gateway,
                    "/v1/chat/completions",
                    &[],
                    chat_body("m", &format!("{prompt}{i}"), false, 1),
                )
                .await
                .unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(reply.header("x-steer-strategy"), Some("prefix-rendezvous"));
            seen.push(reply.header("target-pod").unwrap().to_owned());
        }
        assert!(
            seen.iter().all(|p| *p == seen[0]),
            "group {group}: {seen:?}"
        );
        pods.insert(seen[0].clone());
    }
    assert!(
        pods.len() >= 3,
        "12 prefixes spread over the pods: {pods:?}"
    );
    drop(envoy);
    replica.kill().await;
    common::assert_idle(&stack).await;
}
