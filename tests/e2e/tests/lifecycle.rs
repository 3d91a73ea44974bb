//! Pool changes while serving: hot reload, a pod going down and coming back.

mod common;

use steer_e2e::{Client, Proc, binary_dir, metric_value, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_adds_and_removes_models() {
    // Both engines can serve a, b and c; the config decides what is routed.
    let stack = common::stack(&["a,b,c", "a,b,c"], "least-request").await;
    let client = Client::default();
    let e0 = stack.engines[0].addr();
    let e1 = stack.engines[1].addr();
    let status_of = |model: &'static str| {
        let client = client.clone();
        let gw = stack.gateway();
        async move {
            let r = client.chat(gw, model, &[]).await.unwrap();
            (r.status, r.header("x-mock-engine").map(str::to_owned))
        }
    };
    write_config(
        &stack.config,
        "least-request",
        &[("a", vec![e0]), ("b", vec![e1])],
    )
    .unwrap();
    assert!(
        common::eventually(10, || async { status_of("c").await.0 == 404 }).await,
        "c removed by the first reload"
    );
    assert_eq!(status_of("b").await, (200, Some("engine-1".into())));
    // Add c on engine 1, drop b.
    write_config(
        &stack.config,
        "least-request",
        &[("a", vec![e0]), ("c", vec![e1])],
    )
    .unwrap();
    assert!(
        common::eventually(10, || async {
            status_of("c").await == (200, Some("engine-1".into()))
        })
        .await,
        "new model routable after reload"
    );
    assert_eq!(status_of("b").await.0, 404);
    // A broken edit is rejected and the last good config keeps serving.
    std::fs::write(&stack.config, "models: [this is not a map\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let still = client.chat(stack.gateway(), "c", &[]).await.unwrap();
    assert_eq!(still.status, 200);
    let metrics = client.metrics(stack.metrics()).await.unwrap();
    assert!(
        metric_value(
            &metrics,
            "steer_errors_total",
            &[("reason", "config_reload")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric_value(&metrics, "steer_config_reloads_total", &[]).unwrap() >= 1.0);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_going_down_leaves_rotation_and_comes_back() {
    let mut stack = common::stack(&["m", "m"], "round-robin").await;
    let client = Client::default();
    let down_addr = stack.engines[1].addr();
    let engine = stack.engines.remove(1);
    engine.kill().await;

    // After failed scrapes every request goes to the surviving pod and succeeds.
    assert!(
        common::eventually(10, || async {
            let m = client.metrics(stack.metrics()).await.unwrap();
            metric_value(&m, "steer_pod_ready", &[("pod", &down_addr.to_string())]) == Some(0.0)
        })
        .await,
        "dead pod marked not ready"
    );
    for _ in 0..6 {
        let r = client.chat(stack.gateway(), "m", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-mock-engine"), Some("engine-0"));
    }

    // Same address again: it returns to rotation.
    let revived = Proc::spawn(
        &binary_dir("debug").join("mock-engine"),
        &[
            "--addr",
            &down_addr.to_string(),
            "--model",
            "m",
            "--name",
            "engine-1b",
            "--prefill-us-per-token",
            "0",
            "--decode-us-per-token",
            "0",
        ]
        .map(String::from),
        "listening on",
    )
    .await
    .unwrap();
    assert!(
        common::eventually(10, || async {
            let r = client.chat(stack.gateway(), "m", &[]).await.unwrap();
            r.header("x-mock-engine") == Some("engine-1b")
        })
        .await,
        "revived pod serves again"
    );
    drop(revived);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_listed_by_engines_are_routed_when_discovery_is_on() {
    // Engine 1 also serves a LoRA adapter the config never names.
    let stack = common::stack(&["base", "base,sql-lora"], "least-request").await;
    let client = Client::default();
    let engines = vec![stack.engines[0].addr(), stack.engines[1].addr()];
    let lora_status = || async {
        client
            .chat(stack.gateway(), "sql-lora", &[])
            .await
            .unwrap()
            .status
    };
    assert_eq!(lora_status().await, 200);
    // Only `base` in the config: the adapter is unknown...
    steer_e2e::procs::write_config_with(
        &stack.config,
        "least-request",
        &[("base", engines.clone())],
        &[],
        "",
    )
    .unwrap();
    assert!(common::eventually(10, || async { lora_status().await == 404 }).await);
    // ...until the agent reads the engines' /v1/models: then it goes to engine 1 only.
    steer_e2e::procs::write_config_with(
        &stack.config,
        "least-request",
        &[("base", engines)],
        &[],
        "discover_models: true\n",
    )
    .unwrap();
    assert!(
        common::eventually(10, || async { lora_status().await == 200 }).await,
        "adapter discovered from /v1/models"
    );
    for _ in 0..5 {
        let reply = client.chat(stack.gateway(), "sql-lora", &[]).await.unwrap();
        assert_eq!(reply.header("x-mock-engine"), Some("engine-1"));
    }
    let models = client
        .get(stack.gateway(), "/v1/models")
        .await
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["base", "sql-lora"]);
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_flags_survive_reloads_and_restart_only_changes_are_reported() {
    // The harness runs the agent with `--datapath off`.
    let stack = common::stack(&["a,b,c", "a,b,c"], "least-request").await;
    let client = Client::default();
    let engines = vec![stack.engines[0].addr(), stack.engines[1].addr()];
    let not_applied = || async {
        let m = client.metrics(stack.metrics()).await.unwrap();
        metric_value(
            &m,
            "steer_errors_total",
            &[("reason", "reload_not_applied")],
        )
        .unwrap_or(0.0)
    };
    let status_of = |model: &'static str| {
        let (client, gw) = (client.clone(), stack.gateway());
        async move { client.chat(gw, model, &[]).await.unwrap().status }
    };
    // The file asks for `mode: required`; the flag still says off: nothing to report.
    steer_e2e::procs::write_config_with(
        &stack.config,
        "least-request",
        &[("a", engines.clone())],
        &[],
        "datapath:\n  mode: required\n",
    )
    .unwrap();
    assert!(common::eventually(10, || async { status_of("b").await == 404 }).await);
    assert_eq!(
        not_applied().await,
        0.0,
        "the --datapath flag was re-applied"
    );
    // A datapath change the flags do not cover needs a restart: reported, the rest applies.
    steer_e2e::procs::write_config_with(
        &stack.config,
        "least-request",
        &[("a", engines.clone()), ("b", engines)],
        &[],
        "datapath:\n  mode: required\n  pin_dir: /sys/fs/bpf/steer-elsewhere\n",
    )
    .unwrap();
    assert!(common::eventually(10, || async { status_of("b").await == 200 }).await);
    assert!(
        common::eventually(5, || async { not_applied().await >= 1.0 }).await,
        "pin_dir change reported as not applied"
    );
    common::assert_idle(&stack).await;
}
