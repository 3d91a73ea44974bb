//! Live state of one pod, updated lock-free by streams and the scraper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::routing::{DecidedBy, PodView};

use arc_swap::ArcSwap;

use super::{EngineMetrics, LoraInfo, ModelTokens};

#[derive(Debug)]
pub struct EndpointState {
    pub id: u32,
    pub addr: SocketAddr,
    pub addr_text: Arc<str>,
    pub addr_hash: u64,
    in_flight: AtomicU32,
    /// Prompt + expected completion tokens of the requests in flight (the
    /// agent's own estimate, see [`crate::router::RouteRequest::tokens`]).
    tokens_in_flight: AtomicU64,
    waiting: AtomicU32,
    running: AtomicU32,
    kv_usage_bits: AtomicU32,
    ready: AtomicBool,
    /// A response through Envoy failed (502/503/504) since the last good
    /// scrape: out of rotation until a scrape succeeds.
    suspect: AtomicBool,
    /// Wakes the pod's scraper early (after a failed response).
    pub(crate) rescrape: tokio::sync::Notify,
    scrape_failures: AtomicU32,
    /// Kernel (sock_ops) smoothed RTT in µs; 0 until sampled.
    kernel_srtt_us: AtomicU32,
    /// The engine's own token counters per model, last scrape that had them.
    engine_tokens: ArcSwap<Vec<ModelTokens>>,
    /// The engine's LoRA adapters, last scrape (empty if it reports none).
    lora: ArcSwap<LoraInfo>,
}

impl EndpointState {
    pub fn new(id: u32, addr: SocketAddr) -> Self {
        let addr_text: Arc<str> = addr.to_string().into();
        Self {
            id,
            addr,
            addr_hash: xxhash_rust::xxh3::xxh3_64(addr_text.as_bytes()),
            addr_text,
            in_flight: AtomicU32::new(0),
            tokens_in_flight: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
            running: AtomicU32::new(0),
            kv_usage_bits: AtomicU32::new(0),
            // Optimistic until the scraper proves otherwise, so the first
            // requests after start-up are served.
            ready: AtomicBool::new(true),
            suspect: AtomicBool::new(false),
            rescrape: tokio::sync::Notify::new(),
            scrape_failures: AtomicU32::new(0),
            kernel_srtt_us: AtomicU32::new(0),
            engine_tokens: ArcSwap::default(),
            lora: ArcSwap::default(),
        }
    }

    pub fn view(&self) -> PodView {
        PodView {
            id: self.id,
            addr: self.addr,
            addr_hash: self.addr_hash,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            tokens_in_flight: self.tokens_in_flight(),
            waiting: self.waiting.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            kv_usage: self.kv_usage(),
            latency_us: self.kernel_srtt_us(),
        }
    }

    pub fn kernel_srtt_us(&self) -> u32 {
        self.kernel_srtt_us.load(Ordering::Relaxed)
    }

    pub fn set_kernel_srtt_us(&self, us: u32) {
        self.kernel_srtt_us.store(us, Ordering::Relaxed);
    }

    /// In rotation: scrapes succeed and no response failed since the last one.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.suspect.load(Ordering::Relaxed)
    }

    /// A request to this pod failed upstream (Envoy could not connect, or the
    /// engine answered 502/503/504): the pod leaves rotation at once and is
    /// scraped now; a successful scrape brings it back. Returns true when this
    /// report took it out.
    pub fn report_upstream_failure(&self) -> bool {
        let first = !self.suspect.swap(true, Ordering::Relaxed);
        if first {
            self.rescrape.notify_one();
        }
        first
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn tokens_in_flight(&self) -> u64 {
        self.tokens_in_flight.load(Ordering::Relaxed)
    }

    pub fn engine_running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    pub fn engine_waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The token counters the engine reported per model, last scrape.
    pub fn engine_tokens(&self) -> Arc<Vec<ModelTokens>> {
        self.engine_tokens.load_full()
    }

    /// How well this pod suits a request for the LoRA adapter `model`
    /// ([`LoraInfo::affinity`]).
    pub fn lora_affinity(&self, model: &str) -> f64 {
        self.lora.load().affinity(model)
    }

    pub fn kv_usage(&self) -> f32 {
        f32::from_bits(self.kv_usage_bits.load(Ordering::Relaxed))
    }

    /// Counts a request of `tokens` (prompt + expected completion) against
    /// the pod until the returned guard drops.
    pub fn start(self: &Arc<Self>, tokens: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.tokens_in_flight.fetch_add(tokens, Ordering::Relaxed);
        InFlight(self.clone(), tokens)
    }

    pub fn scrape_succeeded(&self, metrics: EngineMetrics) {
        if let Some(v) = metrics.waiting {
            self.waiting.store(v, Ordering::Relaxed);
        }
        if let Some(v) = metrics.running {
            self.running.store(v, Ordering::Relaxed);
        }
        if let Some(v) = metrics.kv_usage {
            self.kv_usage_bits.store(v.to_bits(), Ordering::Relaxed);
        }
        if !metrics.tokens.is_empty() {
            self.engine_tokens.store(Arc::new(metrics.tokens));
        }
        match metrics.lora {
            Some(lora) => self.lora.store(Arc::new(lora)),
            None if self.lora.load().max_lora > 0 => self.lora.store(Arc::default()),
            None => {}
        }
        self.scrape_failures.store(0, Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
        self.suspect.store(false, Ordering::Relaxed);
    }

    /// Returns true when this failure took the pod out of rotation.
    pub fn scrape_failed(&self, unhealthy_after: u32) -> bool {
        let failures = self.scrape_failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= unhealthy_after && self.ready.swap(false, Ordering::Relaxed)
    }
}

/// Counts a request against its pod until dropped, whatever way the ext_proc
/// stream ends (finished, reset by Envoy, agent error).
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>, u64);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.tokens_in_flight.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// Counters of one (model, pod) pair.
#[derive(Debug, Default)]
pub struct MemberCounters {
    /// Per [`DecidedBy::slot`].
    pub decisions: [AtomicU64; DecidedBy::FIXED.len()],
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct Member {
    pub endpoint: Arc<EndpointState>,
    pub counters: Arc<MemberCounters>,
    /// Decisions per scheduler profile, in `Settings::profiles` order (kept
    /// by name across reloads).
    pub profile_decisions: Arc<[Arc<AtomicU64>]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_guard_and_readiness() {
        let ep = Arc::new(EndpointState::new(1, "127.0.0.1:1".parse().unwrap()));
        let a = ep.start(0);
        let b = ep.start(0);
        assert_eq!(ep.view().in_flight, 2);
        drop(a);
        drop(b);
        assert_eq!(ep.in_flight(), 0);
        assert!(!ep.scrape_failed(2));
        assert!(ep.scrape_failed(2));
        assert!(!ep.is_ready());
        assert!(!ep.scrape_failed(2), "already out: not reported twice");
        ep.scrape_succeeded(EngineMetrics {
            waiting: Some(3),
            running: Some(1),
            kv_usage: Some(0.5),
            tokens: vec![ModelTokens {
                model: "m".into(),
                prompt: 40,
                generation: 8,
            }],
            lora: Some(crate::pool::LoraInfo {
                running: vec!["sql".into()],
                max_lora: 1,
                ..Default::default()
            }),
        });
        assert_eq!(ep.lora_affinity("sql"), 1.0);
        assert_eq!(ep.lora_affinity("other"), 0.0);
        assert!(ep.is_ready());
        assert_eq!(ep.view().waiting, 3);
        assert_eq!(ep.view().kv_usage, 0.5);
        let counted = |ep: &EndpointState| {
            let t = ep.engine_tokens();
            (t.len(), t[0].prompt, t[0].generation)
        };
        assert_eq!(counted(&ep), (1, 40, 8));
        ep.scrape_succeeded(EngineMetrics::default());
        assert_eq!(
            counted(&ep),
            (1, 40, 8),
            "an engine without counters keeps the last"
        );
    }

    #[test]
    fn a_failed_response_takes_the_pod_out_until_a_scrape_succeeds() {
        let ep = EndpointState::new(1, "127.0.0.1:1".parse().unwrap());
        assert!(ep.report_upstream_failure());
        assert!(!ep.report_upstream_failure(), "reported once");
        assert!(!ep.is_ready());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            // The scraper is woken at once (the permit is stored).
            tokio::time::timeout(std::time::Duration::from_secs(1), ep.rescrape.notified())
                .await
                .expect("rescrape notified");
        });
        ep.scrape_succeeded(EngineMetrics::default());
        assert!(ep.is_ready());
    }
}
