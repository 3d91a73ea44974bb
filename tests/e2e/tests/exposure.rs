//! Who can reach the ext_proc port, through real Envoy: a Unix domain socket
//! shared with a node-local Envoy, mutual TLS for a remote one (the shipped
//! `deploy/envoy/mtls/ext-proc-cluster.yaml`), and the bound on streams per
//! HTTP/2 connection.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use steer_e2e::{Client, ExtProcTransport, Stack, TestCerts, chat_body, transport::AGENT_SAN};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

async fn routed_through_envoy(stack: &Stack) {
    let reply = Client::default()
        .chat(stack.gateway(), "m", &[])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let pod = reply.header("target-pod").expect("target-pod echoed");
    assert!(stack.engine_index(pod).is_some(), "{pod}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reaches_the_agent_over_a_unix_socket() {
    let mut opts = common::opts(&["m", "m"], "round-robin");
    opts.ext_proc_transport = ExtProcTransport::Unix;
    let stack = Stack::start(opts).await.unwrap();
    let socket = stack.ext_proc_socket.clone().unwrap();
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    for _ in 0..10 {
        routed_through_envoy(&stack).await;
    }
    // A streamed response (response phases over the socket too).
    let body = chat_body("m", "stream", true, 8);
    let reply = Client::default()
        .post(stack.gateway(), "/v1/chat/completions", &[], body)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("[DONE]"));
    common::assert_idle(&stack).await;
    let status = stack.shutdown().await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

/// A TLS client of the agent trusting `ca`, with a client certificate if given.
fn tls_endpoint(
    stack: &Stack,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(AGENT_SAN);
    if let Some((cert, key)) = identity {
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Endpoint::from_shared(format!("https://{}", stack.ext_proc()))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tls_config(tls)
        .unwrap()
}

/// Opens a stream and sends request headers; Ok if the agent answers.
async fn try_stream(channel: tonic::transport::Channel) -> Result<(), String> {
    use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
    let mut client = ExternalProcessorClient::new(channel);
    let message = ProcessingRequest::default();
    let outbound = tokio_stream::iter([message]);
    let mut replies = client
        .process(outbound)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    replies
        .message()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_envoy_with_its_certificate_and_nobody_else() {
    let mut opts = common::opts(&["m", "m"], "round-robin");
    opts.ext_proc_transport = ExtProcTransport::MutualTls;
    let stack = Stack::start(opts).await.unwrap();
    // Envoy, configured with the shipped mTLS cluster, routes.
    for _ in 0..10 {
        routed_through_envoy(&stack).await;
    }
    let certs = stack.certs.clone().unwrap();

    // Plain text: refused.
    let plain = Endpoint::from_shared(format!("http://{}", stack.ext_proc()))
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    let plain = match plain.connect().await {
        Ok(channel) => try_stream(channel).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(plain.is_err(), "plain-text client admitted");

    // TLS without a client certificate: refused.
    let anonymous = match tls_endpoint(&stack, &certs.ca, None).connect().await {
        Ok(channel) => try_stream(channel).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(anonymous.is_err(), "client without certificate admitted");

    // A client certificate from another CA: refused.
    let other = TestCerts::make(&stack.dir, "other-").unwrap();
    let foreign = tls_endpoint(
        &stack,
        &certs.ca,
        Some((&other.client_cert, &other.client_key)),
    );
    let foreign = match foreign.connect().await {
        Ok(channel) => try_stream(channel).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(
        foreign.is_err(),
        "client certificate of another CA admitted"
    );

    // The trusted client certificate: admitted (the agent answers).
    let trusted = tls_endpoint(
        &stack,
        &certs.ca,
        Some((&certs.client_cert, &certs.client_key)),
    )
    .connect()
    .await
    .unwrap();
    try_stream(trusted).await.expect("trusted client admitted");
    routed_through_envoy(&stack).await;
    common::assert_idle(&stack).await;
}

/// With 2 streams allowed per connection (agent and Envoy's cluster, as the
/// shipped files pair them), 12 concurrent streaming requests all succeed on
/// more connections. Envoy alone would not do it: it starts streams on a new
/// connection before the agent's SETTINGS arrive, and the refused ones fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_opens_connections_beyond_the_streams_per_connection_bound() {
    let mut opts = common::slow_opts(2);
    opts.max_streams_per_connection = Some(2);
    let stack = Stack::start(opts).await.unwrap();
    let streams = common::spawn_streams(&stack, 12, 20);
    for handle in streams {
        let reply = handle.await.unwrap().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.text().contains("[DONE]"));
    }
    let connections = stack
        .envoy
        .stat("cluster.steer_ext_proc.upstream_cx_total")
        .await
        .unwrap();
    assert!(
        connections >= 6,
        "12 concurrent streams at 2 per connection need >= 6 connections, Envoy opened {connections}"
    );
    common::assert_idle(&stack).await;
}
