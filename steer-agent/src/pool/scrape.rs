//! Polls each pod's `/metrics`; a pod whose scrapes keep failing leaves
//! rotation and comes back on its first good scrape.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tokio::task::AbortHandle;

use super::{EndpointState, EngineMetrics, MetricsParser, Pools};
use crate::discovery::EngineModels;
use crate::error_chain::chain;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// How often an engine's `/v1/models` is re-read (adapters come and go
/// slower than load changes).
const MODELS_PERIOD: Duration = Duration::from_secs(2);
/// The largest `/metrics` or `/v1/models` answer read; a larger (or endless)
/// one fails the scrape instead of growing the agent's memory.
pub const MAX_SCRAPE_BYTES: usize = 4 << 20;
/// The read buffer of each pod's keep-alive connection. hyper's default
/// buffer grows with the answer and stays allocated while the connection
/// idles: 64 KiB for vLLM's ~50 KB `/metrics`, 74 KiB a pod in all (soak,
/// 1,000 pods). A fixed 8 KiB costs a few more reads per scrape; a response
/// head must fit in it (a `/metrics` head is a few hundred bytes).
const READ_BUF_BYTES: usize = 8 << 10;
/// The longest wait between scrapes of a pod that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// When to scrape again after `failures` consecutive failures: the normal
/// interval until the pod is out of rotation (detection is not delayed),
/// then doubling up to [`MAX_BACKOFF`], with ±25 % jitter (`jitter` in
/// 0..1) so dead pods do not retry in lockstep.
pub fn retry_after(
    interval: Duration,
    failures: u32,
    unhealthy_after: u32,
    jitter: f64,
) -> Duration {
    if failures < unhealthy_after {
        return interval;
    }
    let doublings = (failures - unhealthy_after + 1).min(16);
    let base = interval.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[derive(Debug)]
pub struct Scraper {
    pools: Arc<Pools>,
    /// Counts failed scrapes (`steer_errors_total{reason="scrape_failed"}`).
    failures: prometheus::IntCounter,
    /// Where `/v1/models` answers go (`discover_models`).
    engine_models: Arc<EngineModels>,
    client: HttpClient,
    tasks: Mutex<HashMap<SocketAddr, AbortHandle>>,
}

#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("timed out")]
    Timeout,
    #[error("HTTP request failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("reading the answer (at most {MAX_SCRAPE_BYTES} bytes)")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Scraper {
    pub fn new(
        pools: Arc<Pools>,
        failures: prometheus::IntCounter,
        engine_models: Arc<EngineModels>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Arc::new(Self {
            pools,
            failures,
            engine_models,
            client: Client::builder(TokioExecutor::new())
                .http1_read_buf_exact_size(READ_BUF_BYTES)
                .build(connector),
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
                self.engine_models.forget(*addr);
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
        let mut models_due = tokio::time::Instant::now();
        let mut failures = 0u32;
        let mut first = true;
        loop {
            // Copied out: the snapshot guard is not held across awaits.
            let (scrape, discover_models) = {
                let snapshot = self.pools.load();
                (snapshot.settings.scrape, snapshot.settings.discover_models)
            };
            if discover_models && tokio::time::Instant::now() >= models_due {
                self.refresh_models(&endpoint, scrape.timeout).await;
                models_due = tokio::time::Instant::now() + MODELS_PERIOD;
            }
            match self.scrape(&uri, scrape.timeout).await {
                Ok(metrics) => {
                    if !endpoint.is_ready() {
                        tracing::info!(pod = %endpoint.addr, "pod is back in rotation");
                    }
                    endpoint.scrape_succeeded(metrics);
                    failures = 0;
                }
                Err(error) => {
                    self.failures.inc();
                    failures = failures.saturating_add(1);
                    if endpoint.scrape_failed(scrape.unhealthy_after) {
                        tracing::warn!(pod = %endpoint.addr, error = %chain(&error), "pod taken out of rotation after failed metric scrapes");
                    } else {
                        tracing::debug!(pod = %endpoint.addr, error = %chain(&error), "metric scrape failed");
                    }
                }
            }
            let jitter = {
                use std::hash::BuildHasher;
                let h = std::hash::RandomState::new().hash_one((endpoint.addr, failures));
                (h % 1000) as f64 / 1000.0
            };
            let mut pause = retry_after(scrape.interval, failures, scrape.unhealthy_after, jitter);
            if first {
                // Pods found together would otherwise be scraped in lockstep
                // forever: CPU bursts and every answer in memory at once.
                pause = pause.mul_f64(jitter);
                first = false;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // A failed response: confirm (or clear) at once.
                () = endpoint.rescrape.notified() => {}
            }
        }
    }

    /// The engine's gauges from `uri`, parsed as the body arrives (only a
    /// partial line is held, not the answer), within `timeout`.
    async fn scrape(
        &self,
        uri: &http::Uri,
        timeout: Duration,
    ) -> Result<EngineMetrics, ScrapeError> {
        let scrape = async {
            let mut body = self.get(uri).await?;
            let mut parser = MetricsParser::default();
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame.map_err(ScrapeError::Body)?.data_ref() {
                    parser.feed(data);
                }
            }
            Ok(parser.finish())
        };
        tokio::time::timeout(timeout, scrape)
            .await
            .map_err(|_| ScrapeError::Timeout)?
    }

    /// GET `uri` within `timeout`: the body of a 2xx answer.
    async fn fetch(&self, uri: &http::Uri, timeout: Duration) -> Result<Bytes, ScrapeError> {
        let fetch = async {
            let body = self.get(uri).await?.collect().await;
            Ok(body.map_err(ScrapeError::Body)?.to_bytes())
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| ScrapeError::Timeout)?
    }

    /// The body of a 2xx answer to GET `uri`, cut off at [`MAX_SCRAPE_BYTES`].
    async fn get(&self, uri: &http::Uri) -> Result<Limited<Incoming>, ScrapeError> {
        let response = self
            .client
            .get(uri.clone())
            .await
            .map_err(|e| ScrapeError::Http(Box::new(e)))?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status(response.status()));
        }
        Ok(Limited::new(response.into_body(), MAX_SCRAPE_BYTES))
    }

    /// What the engine serves per `/v1/models` (base model, LoRA adapters).
    async fn refresh_models(&self, endpoint: &EndpointState, timeout: Duration) {
        let Ok(uri) = format!("http://{}/v1/models", endpoint.addr).parse::<http::Uri>() else {
            return;
        };
        match self.fetch(&uri, timeout).await {
            Ok(body) => match model_ids(&body) {
                Some(ids) => self.engine_models.set(endpoint.addr, ids),
                None => {
                    tracing::debug!(pod = %endpoint.addr, "/v1/models answer is not an OpenAI model list")
                }
            },
            Err(error) => {
                tracing::debug!(pod = %endpoint.addr, error = %chain(&error), "/v1/models fetch failed")
            }
        }
    }
}

/// The ids of an OpenAI `{"data":[{"id":...}]}` model list.
fn model_ids(body: &[u8]) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
    }
    let list: List = serde_json::from_slice(body).ok()?;
    Some(
        list.data
            .into_iter()
            .map(|e| e.id)
            .filter(|id| !id.trim().is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn dead_pods_back_off_exponentially_with_jitter_and_a_cap() {
        let ms = |d: Duration| d.as_millis();
        let interval = Duration::from_millis(100);
        // Until the pod leaves rotation: the normal interval.
        assert_eq!(ms(super::retry_after(interval, 0, 3, 0.5)), 100);
        assert_eq!(ms(super::retry_after(interval, 2, 3, 0.5)), 100);
        // Then doubling (jitter 0.5 = exactly the base).
        assert_eq!(ms(super::retry_after(interval, 3, 3, 0.5)), 200);
        assert_eq!(ms(super::retry_after(interval, 4, 3, 0.5)), 400);
        assert_eq!(ms(super::retry_after(interval, 40, 3, 0.5)), 5000);
        // ±25 %.
        assert_eq!(ms(super::retry_after(interval, 40, 3, 0.0)), 3750);
        assert_eq!(ms(super::retry_after(interval, 40, 3, 1.0)), 6250);
    }

    #[test]
    fn model_ids_from_an_openai_list() {
        let body = br#"{"object":"list","data":[{"id":"llama","object":"model"},{"id":"sql-lora","parent":"llama"},{"id":" "}]}"#;
        assert_eq!(super::model_ids(body).unwrap(), ["llama", "sql-lora"]);
        assert!(super::model_ids(b"<html>").is_none());
    }
}
