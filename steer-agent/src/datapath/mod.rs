//! The eBPF datapath: the agent's decisions and pod tables written into
//! pinned maps, connect4 steering of model VIPs, kernel-measured pod latency
//! read back for routing. Without privileges or kernel support the agent runs
//! header-only and says why.

pub mod doctor;
pub mod inspect;
mod kernel;
pub mod object;
pub mod privileges;
mod stats;
mod sync;
mod tables;

use std::sync::Arc;

pub use kernel::KernelDatapath;
pub use stats::{KernelStats, PodKernelStats};

use crate::config::{DatapathMode, DatapathSettings};
use crate::pool::Pools;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this agent was built without the eBPF object (bpf-linker missing at build time; run `cargo xtask setup` and rebuild)"
    )]
    NoObject,
    #[error("not permitted: {0} (needs CAP_BPF + CAP_NET_ADMIN)")]
    Permission(String),
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("cgroup v2: {0}")]
    Cgroup(String),
    #[error("loading eBPF program(s) {what}")]
    Load {
        what: String,
        #[source]
        source: Option<Source>,
    },
    #[error("attaching {what}")]
    Attach {
        what: String,
        #[source]
        source: Source,
    },
    #[error("eBPF map {map}{context}")]
    Map {
        map: &'static str,
        /// Where or why, e.g. ": missing from the object".
        context: String,
        #[source]
        source: Option<Source>,
    },
    #[error("pinning {path}")]
    Pin {
        path: String,
        #[source]
        source: Source,
    },
}

/// The underlying error (aya's syscall errors keep the errno in theirs).
pub type Source = Box<dyn std::error::Error + Send + Sync>;

impl DatapathError {
    pub(crate) fn load(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Load {
            what: what.to_owned(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn missing_program(what: &str) -> Self {
        Self::Load {
            what: format!("{what} (missing from the object)"),
            source: None,
        }
    }

    pub(crate) fn attach(
        what: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Attach {
            what: what.to_owned(),
            source: Box::new(source),
        }
    }

    pub(crate) fn map(
        map: &'static str,
        context: String,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Map {
            map,
            context,
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn pin(
        path: &std::path::Path,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Pin {
            path: path.display().to_string(),
            source: Box::new(source),
        }
    }
}

pub use crate::error_chain::chain;

/// What the agent runs with, for logs, `/readyz` and metrics.
#[derive(Clone, Debug)]
pub enum Mode {
    Kernel,
    HeaderOnly { reason: String },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::HeaderOnly { .. } => "header-only",
        }
    }
}

/// The running datapath; `None` inside means header-only.
#[derive(Debug)]
pub struct Datapath {
    pub mode: Mode,
    pub kernel: Option<Arc<KernelDatapath>>,
}

impl Datapath {
    /// Starts the kernel datapath if settings and the machine allow it.
    /// `Required` turns any failure into an error; `Auto` degrades to
    /// header-only with one warning.
    pub fn start(settings: &DatapathSettings, pools: &Arc<Pools>) -> Result<Self, DatapathError> {
        if settings.mode == DatapathMode::Off {
            return Ok(Self::header_only(
                "disabled by configuration (datapath mode off)".into(),
            ));
        }
        match KernelDatapath::start(settings) {
            Ok(kernel) => {
                let kernel = Arc::new(kernel);
                let datapath = Self {
                    mode: Mode::Kernel,
                    kernel: Some(kernel.clone()),
                };
                datapath.sync_pods_now(pools);
                sync::spawn(kernel, pools.clone());
                Ok(datapath)
            }
            Err(error) if settings.mode == DatapathMode::Auto => {
                Ok(Self::header_only(chain(&error)))
            }
            Err(error) => Err(error),
        }
    }

    fn header_only(reason: String) -> Self {
        tracing::warn!(%reason, "eBPF datapath not active: header-only mode (routing via target-pod / x-gateway-destination-endpoint headers)");
        Self {
            mode: Mode::HeaderOnly { reason },
            kernel: None,
        }
    }

    /// Writes the pod tables now. Called before new pods are first
    /// contacted (start-up, reload), so sock_ops measures their very first
    /// connection; the background writer handles everything else.
    pub fn sync_pods_now(&self, pools: &Pools) {
        if let Some(kernel) = &self.kernel {
            let snapshot = pools.snapshot();
            if let Err(error) = kernel.tables.lock().sync_pods(&sync::pod_list(&snapshot)) {
                tracing::warn!(%error, "writing pod tables failed");
            }
        }
    }

    pub fn stats(&self) -> Option<Arc<KernelStats>> {
        self.kernel.as_ref().map(|k| k.stats())
    }

    /// Clean shutdown: with `unpin`, detach every program and remove every
    /// pin; without, leave them so the node stays steered across restarts.
    pub fn shutdown(&self, unpin: bool) {
        if let Some(kernel) = &self.kernel {
            if unpin {
                match kernel.unpin_all() {
                    Ok(()) => tracing::info!("eBPF programs detached and pins removed"),
                    Err(error) => tracing::error!(%error, "removing eBPF pins failed"),
                }
            } else {
                tracing::info!(pins = %kernel.pin_dir().display(), "eBPF programs stay attached (pinned); use --unpin to remove");
            }
        }
    }
}
