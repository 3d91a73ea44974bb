//! The on-disk config format. Unknown fields are errors: a typo must not
//! silently fall back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    ConfigError, DatapathMode, DatapathSettings, ModelSettings, PrefixSettings, ScrapeSettings,
    Settings, parse_endpoint,
};
use crate::routing::{Policy, PrefixParams, Strategy};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub default_strategy: Option<String>,
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    #[serde(default)]
    pub max_buffered_body_bytes: Option<usize>,
    #[serde(default)]
    pub max_request_headers: Option<usize>,
    /// `None` when the file has no models (absent, or `models:` with nothing
    /// under it); `Some(empty)` only for an explicit `models: {}`.
    #[serde(default)]
    pub models: Option<BTreeMap<String, ModelEntry>>,
    #[serde(default)]
    pub scrape: ScrapeEntry,
    #[serde(default)]
    pub prefix_cache: PrefixEntry,
    #[serde(default)]
    pub scheduler: super::profiles::SchedulerEntry,
    #[serde(default)]
    pub datapath: DatapathEntry,
    /// Route the models engines list at /v1/models (LoRA adapters) too.
    #[serde(default)]
    pub discover_models: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathEntry {
    pub mode: Option<String>,
    pub pin_dir: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
    pub interfaces: Option<Vec<String>>,
    pub sk_msg: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub strategy: Option<String>,
    /// IPv4 VIP:PORT for kernel (connect4) steering.
    #[serde(default)]
    pub vip: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeEntry {
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub unhealthy_after: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixEntry {
    pub block_bytes: Option<usize>,
    pub max_blocks_per_request: Option<usize>,
    pub index_capacity_blocks: Option<usize>,
    pub imbalance_abs: Option<u32>,
    pub imbalance_rel: Option<f32>,
}

impl FileConfig {
    /// The file removes every model on purpose (`models: {}`), as opposed to
    /// a file that is empty, truncated or only comments.
    pub fn says_no_models(&self) -> bool {
        self.models.as_ref().is_some_and(BTreeMap::is_empty)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_bytes(path).map(|(config, _)| config)
    }

    /// Also returns the bytes parsed, so a watcher compares against exactly
    /// what was loaded (no window where a change goes unseen).
    pub fn load_with_bytes(path: &Path) -> Result<(Self, Vec<u8>), ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(path, &String::from_utf8_lossy(&bytes))?;
        Ok((config, bytes))
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let parse_err = |field: String, message: String| ConfigError::Parse {
            path: path.to_owned(),
            field,
            message,
        };
        match ext {
            "yaml" | "yml" => {
                let de = serde_yaml::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de)
                    .map_err(|e| parse_err(e.path().to_string(), e.into_inner().to_string()))
            }
            "toml" => {
                let de = toml::Deserializer::new(text);
                serde_path_to_error::deserialize(de).map_err(|e| {
                    parse_err(e.path().to_string(), e.into_inner().message().to_owned())
                })
            }
            "json" => {
                let mut de = serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(&mut de)
                    .map_err(|e| parse_err(e.path().to_string(), e.into_inner().to_string()))
            }
            _ => Err(ConfigError::Format {
                path: path.to_owned(),
            }),
        }
    }

    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
        let profiles = super::profiles::resolve(&self.scheduler)?;
        let strategy = |field: String, name: &str| {
            let name = name.trim();
            if let Some(i) = profiles.iter().position(|p| &*p.name == name) {
                return Ok(Policy::Profile(i));
            }
            name.parse::<Strategy>().map(Policy::from).map_err(|e| {
                let known: Vec<&str> = profiles.iter().map(|p| &*p.name).collect();
                invalid(field, format!("{e}; profiles: [{}]", known.join(", ")))
            })
        };
        let default_strategy = match &self.default_strategy {
            Some(name) => strategy("default_strategy".into(), name)?,
            None => Strategy::LeastRequest.into(),
        };
        let mut models = BTreeMap::new();
        for (name, entry) in self.models.unwrap_or_default() {
            if name.trim().is_empty() {
                return Err(invalid("models".into(), "model name is empty".into()));
            }
            let endpoints = entry
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    parse_endpoint(e.trim())
                        .map_err(|m| invalid(format!("models.{name}.endpoints[{i}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let strategy = entry
                .strategy
                .as_deref()
                .map(|s| strategy(format!("models.{name}.strategy"), s))
                .transpose()?;
            let vip = entry
                .vip
                .as_deref()
                .map(|v| {
                    v.trim().parse::<SocketAddrV4>().map_err(|_| {
                        invalid(
                            format!("models.{name}.vip"),
                            format!("`{v}` is not an IPv4 VIP:PORT (e.g. 10.96.0.10:8000)"),
                        )
                    })
                })
                .transpose()?;
            models.insert(
                name,
                ModelSettings {
                    endpoints,
                    strategy,
                    vip,
                },
            );
        }
        let positive = |field: &str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(invalid(field.into(), "must be greater than 0".into())),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let scrape = ScrapeSettings {
            interval: Duration::from_millis(positive(
                "scrape.interval_ms",
                self.scrape.interval_ms,
                100,
            )?),
            timeout: Duration::from_millis(positive(
                "scrape.timeout_ms",
                self.scrape.timeout_ms,
                500,
            )?),
            unhealthy_after: positive(
                "scrape.unhealthy_after",
                self.scrape.unhealthy_after.map(u64::from),
                3,
            )? as u32,
        };
        // At most the gRPC transport's fixed ceiling.
        let max_body_bytes = positive(
            "max_body_bytes",
            self.max_body_bytes.map(|v| v as u64),
            8 << 20,
        )? as usize;
        if max_body_bytes > super::MAX_BODY_BYTES_LIMIT {
            return Err(invalid(
                "max_body_bytes".into(),
                format!(
                    "{max_body_bytes} is above the largest supported body, {} bytes",
                    super::MAX_BODY_BYTES_LIMIT
                ),
            ));
        }
        let max_buffered_body_bytes = positive(
            "max_buffered_body_bytes",
            self.max_buffered_body_bytes.map(|v| v as u64),
            256 << 20,
        )? as usize;
        if max_buffered_body_bytes < max_body_bytes {
            return Err(invalid(
                "max_buffered_body_bytes".into(),
                format!("must be at least max_body_bytes ({max_body_bytes})"),
            ));
        }
        // Envoy's default `common_http_protocol_options.max_headers_count`.
        let max_request_headers = positive(
            "max_request_headers",
            self.max_request_headers.map(|v| v as u64),
            100,
        )? as usize;
        let p = &self.prefix_cache;
        let defaults = PrefixParams::default();
        let imbalance_rel = p.imbalance_rel.unwrap_or(defaults.imbalance_rel);
        if !(imbalance_rel >= 1.0 && imbalance_rel.is_finite()) {
            return Err(invalid(
                "prefix_cache.imbalance_rel".into(),
                "must be a number >= 1.0".into(),
            ));
        }
        let index_capacity_blocks = positive(
            "prefix_cache.index_capacity_blocks",
            p.index_capacity_blocks.map(|v| v as u64),
            1 << 20,
        )? as usize;
        if index_capacity_blocks > super::MAX_INDEX_CAPACITY_BLOCKS {
            return Err(invalid(
                "prefix_cache.index_capacity_blocks".into(),
                format!(
                    "{index_capacity_blocks} is above {} (16 bytes a block)",
                    super::MAX_INDEX_CAPACITY_BLOCKS
                ),
            ));
        }
        let prefix = PrefixSettings {
            block_bytes: positive(
                "prefix_cache.block_bytes",
                p.block_bytes.map(|v| v as u64),
                256,
            )? as usize,
            max_blocks_per_request: positive(
                "prefix_cache.max_blocks_per_request",
                p.max_blocks_per_request.map(|v| v as u64),
                4096,
            )? as usize,
            index_capacity_blocks,
            params: PrefixParams {
                imbalance_abs: p.imbalance_abs.unwrap_or(defaults.imbalance_abs),
                imbalance_rel,
            },
        };
        let d = self.datapath;
        let defaults = DatapathSettings::default();
        let mode = match d.mode.as_deref() {
            None => defaults.mode,
            Some(m) => <DatapathMode as clap::ValueEnum>::from_str(m, true).map_err(|_| {
                invalid(
                    "datapath.mode".into(),
                    format!("`{m}`: expected auto, off or required"),
                )
            })?,
        };
        let datapath = DatapathSettings {
            mode,
            pin_dir: d.pin_dir.unwrap_or(defaults.pin_dir),
            cgroup: d.cgroup,
            interfaces: d.interfaces.unwrap_or_default(),
            sk_msg: d.sk_msg.unwrap_or(false),
        };
        Ok(Settings {
            node_local: Default::default(),
            discover_models: self.discover_models.unwrap_or(false),
            datapath,
            default_strategy,
            profiles,
            models,
            max_body_bytes,
            max_buffered_body_bytes,
            max_request_headers,
            scrape,
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(path: &str, text: &str) -> Result<Settings, ConfigError> {
        FileConfig::parse(Path::new(path), text)?.into_settings()
    }

    #[test]
    fn yaml_toml_json_agree() {
        let yaml = "default_strategy: prefix-cache\nmodels:\n  qwen:\n    endpoints: [\"127.0.0.1:8001\"]\n";
        let toml = "default_strategy = \"prefix-cache\"\n[models.qwen]\nendpoints = [\"127.0.0.1:8001\"]\n";
        let json = r#"{"default_strategy":"prefix-cache","models":{"qwen":{"endpoints":["127.0.0.1:8001"]}}}"#;
        let a = settings("a.yaml", yaml).unwrap();
        assert_eq!(a, settings("a.toml", toml).unwrap());
        assert_eq!(a, settings("a.json", json).unwrap());
        assert_eq!(a.default_strategy, Strategy::PrefixCache.into());
    }

    #[test]
    fn errors_name_the_field() {
        let err = settings(
            "c.yaml",
            "models:\n  qwen:\n    endpoints: [\"127.0.0.1:1\"]\n    stratgy: x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("models.qwen") && err.contains("stratgy"),
            "{err}"
        );
        let err = settings(
            "c.yaml",
            "models:\n  qwen:\n    endpoints: [\"127.0.0.1:1\", \"pod-a\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("models.qwen.endpoints[1]"), "{err}");
        let err = settings("c.toml", "[scrape]\ninterval_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scrape.interval_ms"), "{err}");
        let err = settings("c.yaml", "default_strategy: fastest\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("default_strategy") && err.contains("fastest"),
            "{err}"
        );
        let err = settings("c.toml", "max_body_bytes = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_body_bytes"), "{err}");
        let err = settings("c.yaml", "max_body_bytes: 1000000000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("largest supported body"), "{err}");
        let err = settings(
            "c.yaml",
            "prefix_cache:\n  index_capacity_blocks: 1000000000\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("index_capacity_blocks"), "{err}");
        assert!(matches!(
            FileConfig::parse(Path::new("c.ini"), ""),
            Err(ConfigError::Format { .. })
        ));
    }
}
