//! `/metrics`, `/healthz`, `/readyz` on the admin address.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Metrics;
use crate::pool::Pools;

#[derive(Clone, Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub pools: Arc<Pools>,
    /// Set once the ext_proc listener is bound; cleared on SIGTERM.
    pub serving: Arc<AtomicBool>,
    pub mode: crate::datapath::Mode,
}

pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    state: AdminState,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let snapshot = state.pools.snapshot();
    let ready_pods = snapshot.endpoints.iter().filter(|e| e.is_ready()).count();
    let ready_models = snapshot
        .models
        .values()
        .filter(|m| m.members.iter().any(|e| e.endpoint.is_ready()))
        .count();
    let serving = state.serving.load(Ordering::Relaxed);
    // Ready = serving and able to route something: a node's agent with no
    // routable model sends every request to an error.
    let ready = serving && ready_models > 0;
    let reason = if !serving {
        Some("not serving (starting or shutting down)")
    } else if ready_models == 0 {
        Some("no model has a ready pod")
    } else {
        None
    };
    let body = serde_json::json!({
        "ready": ready,
        "reason": reason,
        "mode": state.mode.name(),
        "datapath_reason": match &state.mode {
            crate::datapath::Mode::HeaderOnly { reason } => Some(reason.as_str()),
            crate::datapath::Mode::Kernel => None,
        },
        "config_generation": snapshot.generation,
        "models": snapshot.models.len(),
        "ready_models": ready_models,
        "pods": snapshot.endpoints.len(),
        "ready_pods": ready_pods,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}
