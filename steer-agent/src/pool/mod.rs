//! Pods and pools: live per-pod state, the immutable routing snapshot, and
//! the engine metrics scraper that keeps pod state fresh.

mod engine_metrics;
mod scrape;
mod snapshot;
mod state;

pub use engine_metrics::{EngineMetrics, LoraInfo, MetricsParser, ModelTokens};
pub use scrape::Scraper;
pub use snapshot::{ModelPool, Pools, Snapshot};
pub use state::{EndpointState, InFlight, Member, MemberCounters};
