//! Signals, the way Kubernetes expects them:
//! - SIGHUP re-reads the config file at once (it never kills the agent);
//! - SIGTERM (or Ctrl-C) fails `/readyz` at once, keeps serving for the
//!   grace period while Envoy and load balancers move away, then stops
//!   accepting and lets open streams finish until the drain deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

/// Installs the SIGHUP handler now; each SIGHUP wakes `reload_now`.
pub fn spawn_sighup(reload_now: Arc<Notify>, has_config: bool) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if has_config {
                tracing::info!("SIGHUP: re-reading the config file");
                reload_now.notify_one();
            } else {
                tracing::info!("SIGHUP ignored: no config file to re-read");
            }
        }
    });
}

/// The shutdown sequence's timing.
#[derive(Clone, Copy, Debug)]
pub struct Shutdown {
    pub grace: Duration,
    pub drain: Duration,
}

impl Shutdown {
    /// Resolves when the agent must stop accepting: SIGTERM (or Ctrl-C),
    /// then `serving` cleared (`/readyz` 503) and the grace period served.
    /// `draining` turns true at that point.
    pub async fn stop_accepting(self, serving: Arc<AtomicBool>, draining: watch::Sender<bool>) {
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => Some(term),
            Err(error) => {
                tracing::warn!(%error, "cannot handle SIGTERM");
                None
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        serving.store(false, Ordering::Relaxed);
        tracing::info!(
            grace_seconds = self.grace.as_secs(),
            "shutting down: /readyz fails now, still serving during the grace period"
        );
        tokio::time::sleep(self.grace).await;
        tracing::info!(
            drain_seconds = self.drain.as_secs(),
            "no longer accepting connections; draining open streams"
        );
        draining.send_replace(true);
    }

    /// Resolves once the drain deadline passed after `draining` turned true.
    pub async fn drain_deadline(self, mut draining: watch::Receiver<bool>) {
        // A dropped sender means no drain ever starts.
        if draining.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.drain).await;
    }
}
