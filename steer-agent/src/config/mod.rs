//! Configuration: a YAML/TOML/JSON file and `--pool` flags, resolved into
//! validated [`Settings`]. Every error names the offending field.

mod file;
mod profiles;
mod reload;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

pub use file::FileConfig;

/// The largest `max_body_bytes` a config may set: the gRPC transport decodes
/// messages up to [`MAX_GRPC_MESSAGE_BYTES`], a fixed ceiling, and the agent
/// enforces the configured (reloadable) limit itself.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 << 20;
/// The transport ceiling: the largest body plus gRPC framing and metadata.
pub const MAX_GRPC_MESSAGE_BYTES: usize = MAX_BODY_BYTES_LIMIT + (64 << 10);
/// The largest `prefix_cache.index_capacity_blocks`: 16 bytes a block, so
/// the index stays within 2 GiB.
pub const MAX_INDEX_CAPACITY_BLOCKS: usize = 1 << 27;
pub use reload::watch_file;

use crate::routing::{NamedProfile, Policy, PrefixParams};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: field `{field}`: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("config file {path}: unsupported extension (use .yaml, .yml, .toml or .json)")]
    Format { path: PathBuf },
    #[error("invalid `{field}`: {message}")]
    Invalid { field: String, message: String },
}

/// Resolved, validated settings. Swapped whole on hot reload.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub default_strategy: Policy,
    /// `scheduler.profiles`, sorted by name; a [`Policy::Profile`] indexes it.
    pub profiles: Vec<NamedProfile>,
    pub models: BTreeMap<String, ModelSettings>,
    pub max_body_bytes: usize,
    /// Request body bytes all streams may hold at once; past it new body
    /// bytes get 503 `overloaded` (memory stays bounded, never an abort).
    pub max_buffered_body_bytes: usize,
    /// Envoy's header-count limit (`max_headers_count`, 100 unless the HCM
    /// sets it): a request that would pass it with the routing headers added
    /// gets 431 from the agent instead of a failed header mutation.
    pub max_request_headers: usize,
    pub scrape: ScrapeSettings,
    pub prefix: PrefixSettings,
    pub datapath: DatapathSettings,
    /// Endpoints known to run on this node (from discovery), for the
    /// datapath's node-local flag.
    pub node_local: BTreeSet<SocketAddr>,
    /// Also route the models each engine lists at `/v1/models` (LoRA
    /// adapters, aliases) to that engine.
    pub discover_models: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSettings {
    pub endpoints: Vec<SocketAddr>,
    pub strategy: Option<Policy>,
    /// Virtual address whose connections the kernel steers to the chosen pod.
    pub vip: Option<SocketAddrV4>,
}

/// Whether the eBPF datapath must, may or must not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DatapathMode {
    /// Use eBPF when the kernel and privileges allow; header-only otherwise.
    #[default]
    Auto,
    /// Header-only: never touch the kernel.
    Off,
    /// Refuse to start without the eBPF datapath.
    Required,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DatapathSettings {
    pub mode: DatapathMode,
    pub pin_dir: PathBuf,
    /// cgroup v2 directory whose processes are steered; None = the root.
    pub cgroup: Option<PathBuf>,
    /// Interfaces whose per-pod traffic TC counts.
    pub interfaces: Vec<String>,
    /// sk_msg socket-to-socket acceleration of node-local pairs.
    pub sk_msg: bool,
}

impl Default for DatapathSettings {
    fn default() -> Self {
        Self {
            mode: DatapathMode::Auto,
            pin_dir: PathBuf::from(steer_ebpf_abi::PIN_DIR),
            cgroup: None,
            interfaces: Vec::new(),
            sk_msg: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScrapeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed scrapes before a pod is taken out of rotation.
    pub unhealthy_after: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefixSettings {
    pub block_bytes: usize,
    pub max_blocks_per_request: usize,
    pub index_capacity_blocks: usize,
    pub params: PrefixParams,
}

/// `--pool MODEL=HOST:PORT[,HOST:PORT...]`
#[derive(Clone, Debug, PartialEq)]
pub struct PoolFlag {
    pub model: String,
    pub endpoints: Vec<SocketAddr>,
}

impl std::str::FromStr for PoolFlag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (model, list) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected MODEL=HOST:PORT[,HOST:PORT...]"))?;
        let model = model.trim();
        if model.is_empty() {
            return Err(format!("`{s}`: model name is empty"));
        }
        let endpoints = list
            .split(',')
            .map(|e| parse_endpoint(e.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("`{s}`: {e}"))?;
        Ok(Self {
            model: model.to_owned(),
            endpoints,
        })
    }
}

/// Envoy's ORIGINAL_DST cluster needs a literal IP:port, so names are refused.
pub fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("`{s}` is not an IP:PORT endpoint (e.g. 10.0.0.7:8000)"))
}

impl Settings {
    /// Whether routing by `policy` reads the prompt.
    pub fn reads_prompt(&self, policy: Policy) -> bool {
        match policy {
            Policy::Strategy(s) => s.reads_prompt(),
            Policy::Profile(i) => self
                .profiles
                .get(i)
                .is_some_and(|p| p.profile.reads_prompt()),
        }
    }

    /// File settings (if any) with `--pool` flags layered on top: a flag
    /// replaces the file's endpoints for that model.
    pub fn resolve(file: Option<FileConfig>, flags: &[PoolFlag]) -> Result<Self, ConfigError> {
        let mut settings = file.unwrap_or_default().into_settings()?;
        for flag in flags {
            let model = settings.models.get(&flag.model);
            let strategy = model.and_then(|m| m.strategy);
            let vip = model.and_then(|m| m.vip);
            settings.models.insert(
                flag.model.clone(),
                ModelSettings {
                    endpoints: flag.endpoints.clone(),
                    strategy,
                    vip,
                },
            );
        }
        Ok(settings)
    }
}

/// Settings from a YAML config text (unit tests across the crate).
#[cfg(test)]
pub(crate) fn settings_from_yaml(yaml: &str) -> Settings {
    let file: FileConfig = serde_yaml::from_str(yaml).expect("test YAML parses");
    Settings::resolve(Some(file), &[]).expect("test settings resolve")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Strategy;

    #[test]
    fn pool_flag_parses_and_rejects() {
        let flag: PoolFlag = "qwen=127.0.0.1:8001,127.0.0.1:8002".parse().unwrap();
        assert_eq!(flag.model, "qwen");
        assert_eq!(flag.endpoints.len(), 2);
        assert!(
            "qwen"
                .parse::<PoolFlag>()
                .unwrap_err()
                .contains("MODEL=HOST:PORT")
        );
        assert!(
            "=1.2.3.4:1"
                .parse::<PoolFlag>()
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            "q=localhost:80"
                .parse::<PoolFlag>()
                .unwrap_err()
                .contains("not an IP:PORT")
        );
    }

    #[test]
    fn flags_override_file_models_and_keep_their_strategy() {
        let file: FileConfig = serde_yaml::from_str(
            "models:\n  qwen:\n    endpoints: [\"10.0.0.1:80\"]\n    strategy: prefix-cache\n",
        )
        .unwrap();
        let flags = [
            "qwen=127.0.0.1:1".parse().unwrap(),
            "llama=127.0.0.1:2".parse().unwrap(),
        ];
        let s = Settings::resolve(Some(file), &flags).unwrap();
        assert_eq!(
            s.models["qwen"].endpoints,
            vec!["127.0.0.1:1".parse().unwrap()]
        );
        assert_eq!(
            s.models["qwen"].strategy,
            Some(Strategy::PrefixCache.into())
        );
        assert_eq!(s.models["llama"].strategy, None);
        assert_eq!(s.default_strategy, Strategy::LeastRequest.into());
    }
}
