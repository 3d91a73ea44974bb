//! `steer-agent run`: wires config, pools, scraper, ext_proc and admin
//! servers together and runs them until a shutdown signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

use crate::apply::Applier;
use crate::cli::{DiscoveryMode, RunArgs};
use crate::config::{ConfigError, FileConfig, Settings, watch_file};
use crate::datapath::Datapath;
use crate::discovery::EngineModels;
use crate::extproc::{ExtProcService, FailureLog, Shared};
use crate::lifecycle::{Shutdown, spawn_sighup};
use crate::listen::{ListenAddr, ListenError, TlsFiles};
use crate::overrides::{Overrides, keep_restart_only};
use crate::pool::{Pools, Scraper};
use crate::router::Router;
use crate::serve::{Bound, ServeOptions, serve};
use crate::telemetry::{AdminState, ErrorKind, Metrics, serve_admin};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("ext_proc server: {0}")]
    ExtProc(#[from] crate::listen::ListenError),
    #[error("eBPF datapath required but unavailable: {}", crate::datapath::chain(.0))]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error("Kubernetes discovery: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    #[error("cannot start the control-plane thread: {0}")]
    Control(std::io::Error),
    #[error("a control-plane task failed: {0}")]
    ControlTask(#[from] tokio::task::JoinError),
}

/// Settings from the config file (if any) and flags, and the file's bytes.
pub fn load_settings(args: &RunArgs) -> Result<(Settings, Vec<u8>), ConfigError> {
    let (file, bytes) = match args.config.as_deref() {
        Some(path) => {
            let (file, bytes) = FileConfig::load_with_bytes(path)?;
            (Some(file), bytes)
        }
        None => (None, Vec::new()),
    };
    let mut settings = Settings::resolve(file, &args.pools)?;
    Overrides::from_args(args)?.apply(&mut settings);
    Ok((settings, bytes))
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let (settings, loaded) = load_settings(&args)?;
    if settings.models.is_empty() {
        tracing::warn!(
            "no models configured: every request will get 404 until a config file or --pool adds one"
        );
    }
    let datapath_settings = settings.datapath.clone();
    let pools = Arc::new(Pools::new(settings));
    let metrics = Metrics::new(pools.clone());
    // Everything spawned in `control`'s context (or on it) stays off the
    // ext_proc event loop: the datapath's writers, the scrapers (and every
    // scrape the applier reconciles later, from tasks on the same runtime),
    // reloads, discovery and the metrics server.
    let control = crate::control::start().map_err(RunError::Control)?;
    let datapath = {
        let _on_control = control.enter();
        Arc::new(Datapath::start(&datapath_settings, &pools)?)
    };
    metrics.register_datapath(&datapath);
    // The agent's state, built once here; each subsystem gets its parts.
    let router = Arc::new(Router::new(pools.clone()));
    router.spawn_prefix_recorder();
    let shared = Arc::new(Shared {
        router: router.clone(),
        metrics: metrics.clone(),
        body_budget: Default::default(),
        stream_idle: Duration::from_secs(args.stream_idle_timeout_seconds),
    });
    let engine_models = Arc::new(EngineModels::default());
    let scraper = Scraper::new(
        pools.clone(),
        metrics.error_counter(ErrorKind::ScrapeFailed),
        engine_models.clone(),
    );
    {
        let _on_control = control.enter();
        scraper.reconcile();
    }
    let applier = Applier::new(
        pools.clone(),
        router,
        scraper,
        datapath.clone(),
        engine_models.clone(),
        pools.snapshot().settings.clone(),
    );

    if let Some(path) = args.config.clone() {
        let (applier, metrics) = (applier.clone(), metrics.clone());
        let period = Duration::from_millis(args.reload_interval_ms.max(50));
        let overrides = Overrides::from_args(&args)?;
        let running = pools.snapshot().settings.clone();
        let reload_now = Arc::new(tokio::sync::Notify::new());
        spawn_sighup(reload_now.clone(), true);
        control.spawn(watch_file(
            path,
            loaded,
            args.pools.clone(),
            period,
            reload_now,
            !running.models.is_empty(),
            move |result| match result {
                Ok(mut settings) => {
                    overrides.apply(&mut settings);
                    for setting in keep_restart_only(&running, &mut settings) {
                        metrics.error(ErrorKind::ReloadNotApplied);
                        tracing::warn!(
                            setting,
                            "config change not applied: this setting takes effect on restart only"
                        );
                    }
                    applier.set_base(settings);
                    metrics.config_reloads.inc();
                }
                Err(error) => {
                    metrics.error(ErrorKind::ConfigReload);
                    tracing::error!(%error, "config change rejected; keeping the previous config");
                }
            },
        ));
    }
    if args.config.is_none() {
        spawn_sighup(Arc::new(tokio::sync::Notify::new()), false);
    }
    {
        // Engines listing new models (LoRA adapters) change the pools too.
        let applier = applier.clone();
        control.spawn(async move {
            loop {
                engine_models.changed().await;
                applier.refresh();
            }
        });
    }
    if args.discovery == DiscoveryMode::Kubernetes {
        start_discovery(&args, &applier, &metrics, &control).await?;
    }

    let tls = TlsFiles::from_parts(
        args.ext_proc_tls_cert.clone(),
        args.ext_proc_tls_key.clone(),
        args.ext_proc_tls_client_ca.clone(),
    )?
    .map(|files| files.server_config())
    .transpose()?;
    // Bound here (errors at start-up), served on the control runtime.
    let admin_listener = std::net::TcpListener::bind(args.metrics_addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| RunError::Bind {
            what: "metrics",
            addr: args.metrics_addr,
            source,
        })?;
    let ext_proc_listener = Bound::bind(&args.ext_proc_addr).await?;
    let serving = Arc::new(AtomicBool::new(false));
    let admin = AdminState {
        metrics: metrics.clone(),
        pools: pools.clone(),
        serving: serving.clone(),
        mode: datapath.mode.clone(),
    };
    let ext_proc_addr = ext_proc_listener
        .local_addr()
        .map_err(|source| ListenError::Bind {
            addr: args.ext_proc_addr.clone(),
            source,
        })?;
    let metrics_addr = admin_listener
        .local_addr()
        .map_err(|source| RunError::Bind {
            what: "metrics",
            addr: args.metrics_addr,
            source,
        })?;
    let mtls = tls.is_some();
    if ext_proc_addr.is_remote() && !mtls {
        tracing::warn!(
            %ext_proc_addr,
            "ext_proc accepts plain connections from other hosts: anyone who reaches it can open streams; bind loopback or a Unix socket, or turn on mutual TLS (--ext-proc-tls-*)"
        );
    }
    tracing::info!(
        %ext_proc_addr,
        mtls,
        %metrics_addr,
        models = pools.load().models.len(),
        "steer-agent serving"
    );
    // One machine-readable line for scripts and harnesses (ports may be 0).
    println!("steer-agent listening ext_proc={ext_proc_addr} metrics={metrics_addr}");
    control.spawn(async move {
        let served = match tokio::net::TcpListener::from_std(admin_listener) {
            Ok(listener) => serve_admin(listener, admin).await,
            Err(error) => Err(error),
        };
        if let Err(error) = served {
            tracing::error!(%error, "metrics server stopped");
        }
    });

    // A fixed transport ceiling: `max_body_bytes` can change on reload and is
    // enforced per stream by the agent, with an OpenAI-style 413.
    let service = ExternalProcessorServer::new(ExtProcService::new(shared.clone()))
        .max_decoding_message_size(crate::config::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(crate::config::MAX_GRPC_MESSAGE_BYTES);
    // Turns true when the agent stops accepting: starts the drain deadline
    // and ends Envoy's access-log streams (Envoy never ends them itself).
    let (draining, drain_started) = tokio::sync::watch::channel(false);
    let failures = AccessLogServiceServer::new(FailureLog::new(shared, drain_started.clone()));
    serving.store(true, Ordering::Relaxed);
    let shutdown = Shutdown {
        grace: Duration::from_secs(args.shutdown_grace_seconds),
        drain: Duration::from_secs(args.drain_timeout_seconds),
    };
    let options = ServeOptions {
        tls,
        max_streams_per_connection: args.max_streams_per_connection,
    };
    let server = serve(
        ext_proc_listener,
        service,
        failures,
        options,
        shutdown.stop_accepting(serving.clone(), draining),
    );
    tokio::select! {
        result = server => result?,
        _ = shutdown.drain_deadline(drain_started) => {
            tracing::warn!("drain deadline passed: open streams are cut");
            if let ListenAddr::Unix(path) = &ext_proc_addr {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    datapath.shutdown(args.unpin);
    tracing::info!("steer-agent stopped");
    Ok(())
}

/// Watches the cluster and feeds every new view to the applier.
async fn start_discovery(
    args: &RunArgs,
    applier: &Arc<Applier>,
    metrics: &Metrics,
    control: &tokio::runtime::Handle,
) -> Result<(), RunError> {
    use crate::discovery::{self, DiscoveryStats, KubeOptions};
    use crate::telemetry::DiscoveryCollector;
    // The client's own tasks (kube's request buffer) live where it is built.
    let client = control.spawn(discovery::client_from_env()).await??;
    let stats = DiscoveryStats::new();
    if let Err(error) = metrics
        .registry
        .register(Box::new(DiscoveryCollector::new(stats.clone())))
    {
        tracing::warn!(%error, "registering discovery metrics failed");
    }
    let options = KubeOptions {
        namespace: args.k8s_namespace.clone(),
        model_label: args.k8s_model_label.clone(),
        port_label: args.k8s_port_label.clone(),
        default_port: args.k8s_default_port,
        inference_pools: args.k8s_inference_pools,
        node_name: args.node_name.clone(),
    };
    tracing::info!(?options, "Kubernetes discovery started");
    let applier = applier.clone();
    control.spawn(discovery::run(client, options, stats, move |view| {
        applier.set_discovered(view)
    }));
    Ok(())
}
