//! Simulated engine: bounded running slots, a waiting queue, prefill/decode delays.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Args;
use crate::cache::{self, PrefixCache};
use crate::metrics::Metrics;

pub(crate) struct Engine {
    pub(crate) args: Args,
    /// Value of the `x-mock-engine` header.
    pub(crate) name: HeaderValue,
    pub(crate) metrics: Metrics,
    /// Injected HTTP status, 0 when healthy.
    pub(crate) fault: AtomicU16,
    cache: Mutex<PrefixCache>,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// Outcome of the prefill phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prefill {
    pub(crate) prompt_tokens: u64,
    pub(crate) cached_tokens: u64,
}

/// A running slot. Dropping it (request done or client gone) frees the slot
/// and the KV blocks it accounted for.
pub(crate) struct Running {
    engine: Arc<Engine>,
    kv_blocks: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.engine.metrics.running.fetch_sub(1, Relaxed);
        self.engine
            .metrics
            .kv_blocks_held
            .fetch_sub(self.kv_blocks, Relaxed);
    }
}

/// Keeps `waiting` right even when a queued request is cancelled.
struct Waiting<'a>(&'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

impl Engine {
    pub(crate) fn new(args: Args, name: &str) -> Arc<Self> {
        let name =
            HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("mock-engine"));
        let slots = Arc::new(Semaphore::new(args.max_running as usize));
        let cache = Mutex::new(PrefixCache::new(
            usize::try_from(args.cache_blocks).unwrap_or(usize::MAX),
        ));
        Arc::new(Self {
            args,
            name,
            metrics: Metrics::default(),
            fault: AtomicU16::new(0),
            cache,
            slots,
            next_id: AtomicU64::new(0),
        })
    }

    pub(crate) fn serves(&self, model: &str) -> bool {
        self.args.served_models().iter().any(|m| m == model)
    }

    pub(crate) fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}-mock{:016x}", self.next_id.fetch_add(1, Relaxed))
    }

    pub(crate) fn now_unix() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Waits for a running slot; the request then holds KV blocks for its
    /// prompt plus its whole completion.
    pub(crate) async fn admit(self: &Arc<Self>, total_tokens: u64) -> Option<Running> {
        let m = &self.metrics;
        m.requests.fetch_add(1, Relaxed);
        m.waiting.fetch_add(1, Relaxed);
        let waiting = Waiting(m);
        let permit = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        drop(waiting);
        let kv_blocks = total_tokens.div_ceil(self.args.block_tokens);
        m.running.fetch_add(1, Relaxed);
        m.kv_blocks_held.fetch_add(kv_blocks, Relaxed);
        Some(Running {
            engine: Arc::clone(self),
            kv_blocks,
            _permit: permit,
        })
    }

    /// Looks the prompt up in the prefix cache, sleeps for the uncached part,
    /// then caches all its full blocks.
    pub(crate) async fn prefill(&self, text: &str, use_cache: bool) -> Prefill {
        let prompt_tokens = cache::token_count(text);
        let hashes = if use_cache {
            cache::block_hashes(text, self.args.block_tokens)
        } else {
            Vec::new()
        };
        let hit_blocks = self.cache.lock().leading_hits(&hashes) as u64;
        let cached_tokens = (hit_blocks * self.args.block_tokens).min(prompt_tokens);
        let m = &self.metrics;
        m.prompt_tokens.fetch_add(prompt_tokens, Relaxed);
        if use_cache {
            m.prefix_queries.fetch_add(prompt_tokens, Relaxed);
            m.prefix_hits.fetch_add(cached_tokens, Relaxed);
        }
        let us = (prompt_tokens - cached_tokens).saturating_mul(self.args.prefill_us_per_token);
        sleep_us(us).await;
        if !hashes.is_empty() {
            self.cache.lock().insert_all(&hashes);
        }
        Prefill {
            prompt_tokens,
            cached_tokens,
        }
    }
}

/// Sleeps unless `us` is zero, so zero-delay benchmark runs pay nothing.
pub(crate) async fn sleep_us(us: u64) {
    if us > 0 {
        tokio::time::sleep(Duration::from_micros(us)).await;
    }
}
