//! Polls each pod's `/metrics`; a pod whose scrapes keep failing leaves
//! rotation and comes back on its first good scrape.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tokio::task::AbortHandle;

use super::{EndpointState, EngineMetrics, Pools};
use crate::telemetry::{ErrorKind, Metrics};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

#[derive(Debug)]
pub struct Scraper {
    pools: Arc<Pools>,
    metrics: Arc<Metrics>,
    client: HttpClient,
    tasks: Mutex<HashMap<SocketAddr, AbortHandle>>,
}

#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Http(String),
    #[error("status {0}")]
    Status(http::StatusCode),
}

impl Scraper {
    pub fn new(pools: Arc<Pools>, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Arc::new(Self {
            pools,
            metrics,
            client: Client::builder(TokioExecutor::new()).build(connector),
            tasks: Mutex::default(),
        })
    }

    /// Starts a poller for each new pod and stops those of removed pods.
    pub fn reconcile(self: &Arc<Self>) {
        let snapshot = self.pools.snapshot();
        let mut tasks = self.tasks.lock();
        tasks.retain(|addr, task| {
            let keep = snapshot.endpoints.iter().any(|e| e.addr == *addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for endpoint in &snapshot.endpoints {
            tasks.entry(endpoint.addr).or_insert_with(|| {
                tokio::spawn(self.clone().poll(endpoint.clone())).abort_handle()
            });
        }
    }

    async fn poll(self: Arc<Self>, endpoint: Arc<EndpointState>) {
        let uri: http::Uri = match format!("http://{}/metrics", endpoint.addr).parse() {
            Ok(uri) => uri,
            Err(_) => return,
        };
        loop {
            let scrape = self.pools.load().settings.scrape;
            match self.scrape_once(&uri, scrape.timeout).await {
                Ok(metrics) => {
                    if !endpoint.is_ready() {
                        tracing::info!(pod = %endpoint.addr, "pod is back in rotation");
                    }
                    endpoint.scrape_succeeded(&metrics);
                }
                Err(error) => {
                    self.metrics.error(ErrorKind::ScrapeFailed);
                    if endpoint.scrape_failed(scrape.unhealthy_after) {
                        tracing::warn!(pod = %endpoint.addr, %error, "pod taken out of rotation after failed metric scrapes");
                    } else {
                        tracing::debug!(pod = %endpoint.addr, %error, "metric scrape failed");
                    }
                }
            }
            tokio::time::sleep(scrape.interval).await;
        }
    }

    async fn scrape_once(
        &self,
        uri: &http::Uri,
        timeout: std::time::Duration,
    ) -> Result<EngineMetrics, ScrapeError> {
        let fetch = async {
            let response = self
                .client
                .get(uri.clone())
                .await
                .map_err(|e| ScrapeError::Http(e.to_string()))?;
            if !response.status().is_success() {
                return Err(ScrapeError::Status(response.status()));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ScrapeError::Http(e.to_string()))?
                .to_bytes();
            Ok(EngineMetrics::parse(&String::from_utf8_lossy(&body)))
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| ScrapeError::Timeout)?
    }
}
