//! How the agent ends and reloads: signals and bad config files, through
//! real Envoy.

mod common;

use std::time::{Duration, Instant};

use steer_e2e::{Client, Stack, chat_body, metric_value};

fn signal(stack: &Stack, sig: i32) {
    let pid = stack.agent.pid().expect("agent running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

async fn readyz(stack: &Stack) -> (u16, serde_json::Value) {
    let reply = Client::default()
        .get(stack.metrics(), "/readyz")
        .await
        .unwrap();
    (reply.status, reply.json().unwrap())
}

async fn stream(client: &Client, stack: &Stack, tokens: u32) -> steer_e2e::Reply {
    client
        .post(
            stack.gateway(),
            "/v1/chat/completions",
            &[],
            chat_body("m", "go", true, tokens),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_never_kills_streams_in_flight() {
    let stack = Stack::start(common::slow_opts(2)).await.unwrap();
    let client = Client::default();
    let streams = common::spawn_streams(&stack, 8, 40);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&stack, libc::SIGHUP);
    for s in streams {
        let reply = s.await.unwrap().unwrap();
        assert_eq!(reply.status, 200);
        assert!(
            reply.text().trim_end().ends_with("data: [DONE]"),
            "stream cut by SIGHUP"
        );
    }
    assert_eq!(
        client.chat(stack.gateway(), "m", &[]).await.unwrap().status,
        200
    );
    common::assert_idle(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_serves_the_grace_then_drains() {
    let mut opts = common::slow_opts(1);
    opts.agent_args = vec![
        "--shutdown-grace-seconds".into(),
        "2".into(),
        "--drain-timeout-seconds".into(),
        "5".into(),
    ];
    let mut stack = Stack::start(opts).await.unwrap();
    let client = Client::default();
    assert_eq!(readyz(&stack).await.0, 200);
    // A 60-token stream (1.2 s) runs across the signal.
    let long = common::spawn_streams(&stack, 1, 60).remove(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    signal(&stack, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = readyz(&stack).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    // New requests during the grace are still served.
    let reply = stream(&client, &stack, 2).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let long = long.await.unwrap().unwrap();
    assert_eq!(long.status, 200);
    assert!(long.text().trim_end().ends_with("data: [DONE]"));
    let exit = stack.agent.stop().await.expect("agent exits");
    assert!(exit.success(), "{exit:?}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(9),
        "grace 2 s + drain: exited after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_config_is_refused_unless_it_says_models_empty() {
    let stack = common::stack(&["m"], "least-request").await;
    let client = Client::default();
    let reload_errors = || async {
        let m = client.metrics(stack.metrics()).await.unwrap();
        metric_value(&m, "steer_errors_total", &[("reason", "config_reload")]).unwrap_or(0.0)
    };
    let mut expected = reload_errors().await;
    for broken in [
        "",
        "# only a comment\n",
        "models:\n",
        "default_strategy: random\n",
    ] {
        std::fs::write(&stack.config, broken).unwrap();
        expected += 1.0;
        assert!(
            common::eventually(5, || async { reload_errors().await >= expected }).await,
            "{broken:?} refused"
        );
        let reply = client.chat(stack.gateway(), "m", &[]).await.unwrap();
        assert_eq!(
            reply.status, 200,
            "{broken:?}: the last good config keeps serving"
        );
        assert_eq!(readyz(&stack).await.0, 200);
    }
    // On purpose: every model removed; the agent says it cannot route.
    std::fs::write(&stack.config, "models: {}\n").unwrap();
    assert!(
        common::eventually(5, || async {
            client.chat(stack.gateway(), "m", &[]).await.unwrap().status == 404
        })
        .await
    );
    let (status, body) = readyz(&stack).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "no model has a ready pod");
}
