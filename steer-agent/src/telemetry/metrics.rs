//! The agent's own metrics. Everything touched per request is a plain atomic
//! (histogram observe, pre-resolved error counters, per-pod counters read at
//! scrape time), so the hot path takes no lock.

use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use super::pool_collector::PoolCollector;
use crate::pool::Pools;

/// Every failure the agent counts, by `steer_errors_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidJson,
    MissingModel,
    UnknownStrategy,
    UnknownModel,
    BodyTooLarge,
    NoReadyEndpoint,
    NoBody,
    UnsupportedBodyMode,
    Protocol,
    ScrapeFailed,
    ConfigReload,
    /// A reload changed a setting that only a restart applies.
    ReloadNotApplied,
    /// A body was refused: all streams together hold `max_buffered_body_bytes`.
    Overloaded,
    /// A stream sent nothing for `--stream-idle-timeout-seconds` and was ended
    /// by the agent (its pod's in-flight count released).
    IdleStream,
    /// With the routing headers added, a request would pass Envoy's header
    /// count limit.
    TooManyHeaders,
    /// A routed request's response failed upstream (502/503/504): its pod
    /// left rotation until the next good scrape.
    UpstreamFailed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 16] = [
        Self::InvalidJson,
        Self::MissingModel,
        Self::UnknownStrategy,
        Self::UnknownModel,
        Self::BodyTooLarge,
        Self::NoReadyEndpoint,
        Self::NoBody,
        Self::UnsupportedBodyMode,
        Self::Protocol,
        Self::ScrapeFailed,
        Self::ConfigReload,
        Self::ReloadNotApplied,
        Self::Overloaded,
        Self::IdleStream,
        Self::TooManyHeaders,
        Self::UpstreamFailed,
    ];

    pub fn metric_label(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::MissingModel => "missing_model",
            Self::UnknownStrategy => "unknown_strategy",
            Self::UnknownModel => "unknown_model",
            Self::BodyTooLarge => "body_too_large",
            Self::NoReadyEndpoint => "no_ready_endpoint",
            Self::NoBody => "no_body",
            Self::UnsupportedBodyMode => "unsupported_body_mode",
            Self::Protocol => "protocol",
            Self::ScrapeFailed => "scrape_failed",
            Self::ConfigReload => "config_reload",
            Self::ReloadNotApplied => "reload_not_applied",
            Self::Overloaded => "overloaded",
            Self::IdleStream => "idle_stream",
            Self::TooManyHeaders => "too_many_headers",
            Self::UpstreamFailed => "upstream_failed",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// A request's last message (body end, or headers when bodiless) → its
    /// routing reply built: parse + route.
    pub decision_seconds: Histogram,
    errors: Vec<IntCounter>,
    pub config_reloads: IntCounter,
}

impl Metrics {
    pub fn new(pools: Arc<Pools>) -> Arc<Self> {
        let registry = Registry::new();
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "steer_decision_duration_seconds",
                "Agent time per decision: from the request's last message (body end, or headers of a bodiless request) to its routing reply built (parse + route).",
            )
            .buckets(vec![
                5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3,
            ]),
        )
        .expect("static histogram options are valid");
        let errors_vec = IntCounterVec::new(
            Opts::new("steer_errors_total", "Failures by reason."),
            &["reason"],
        )
        .expect("static counter options are valid");
        // Resolve every label once so the hot path never looks one up.
        let errors = ErrorKind::ALL
            .iter()
            .map(|k| errors_vec.with_label_values(&[k.metric_label()]))
            .collect();
        let config_reloads =
            IntCounter::new("steer_config_reloads_total", "Config file changes applied.")
                .expect("static counter options are valid");
        for collector in [
            Box::new(decision_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors_vec),
            Box::new(config_reloads.clone()),
            Box::new(PoolCollector::new(pools)),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Arc::new(Self {
            registry,
            decision_seconds,
            errors,
            config_reloads,
        })
    }

    /// Adds the datapath's metrics and the `steer_datapath_mode` gauge.
    pub fn register_datapath(&self, datapath: &crate::datapath::Datapath) {
        let mode = prometheus::IntGaugeVec::new(
            Opts::new(
                "steer_datapath_mode",
                "1 for the active datapath mode (kernel or header-only).",
            ),
            &["mode"],
        )
        .expect("static options are valid");
        mode.with_label_values(&[datapath.mode.name()]).set(1);
        let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![Box::new(mode)];
        if let Some(kernel) = &datapath.kernel {
            collectors.push(Box::new(super::kernel_collector::KernelCollector::new(
                kernel.clone(),
            )));
        }
        for collector in collectors {
            if let Err(error) = self.registry.register(collector) {
                tracing::warn!(%error, "registering datapath metrics failed");
            }
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        if let Some(counter) = self.errors.get(kind as usize) {
            counter.inc();
        }
    }

    /// The counter of one error reason, for a subsystem that only counts.
    pub fn error_counter(&self, kind: ErrorKind) -> prometheus::IntCounter {
        self.errors[kind as usize].clone()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(error) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_labels_line_up_with_kinds() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i);
        }
    }
}
