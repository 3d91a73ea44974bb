//! Command-line flags over the config file, applied by one function at
//! start-up and on every reload, and the settings a running agent cannot
//! change (a reload that changes them is logged and counted, the running
//! values stay).

use crate::cli::RunArgs;
use crate::config::{ConfigError, Settings};
use crate::routing::{Strategy, UnknownStrategy};

/// The flags that override the file (`--pool` is merged by
/// `Settings::resolve` itself).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    default_strategy: Option<Strategy>,
    discover_models: bool,
    datapath_mode: Option<crate::config::DatapathMode>,
    pin_dir: Option<std::path::PathBuf>,
    cgroup: Option<std::path::PathBuf>,
    interfaces: Vec<String>,
    sk_msg: bool,
}

impl Overrides {
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let default_strategy = args
            .default_strategy
            .as_deref()
            .map(|name| {
                name.parse()
                    .map_err(|e: UnknownStrategy| ConfigError::Invalid {
                        field: "--default-strategy".into(),
                        message: e.to_string(),
                    })
            })
            .transpose()?;
        Ok(Self {
            default_strategy,
            discover_models: args.discover_models,
            datapath_mode: args.datapath,
            pin_dir: args.bpf_pin_dir.clone(),
            cgroup: args.cgroup.clone(),
            interfaces: args.tc_interfaces.clone(),
            sk_msg: args.sk_msg,
        })
    }

    pub fn apply(&self, settings: &mut Settings) {
        if let Some(strategy) = self.default_strategy {
            settings.default_strategy = strategy.into();
        }
        settings.discover_models |= self.discover_models;
        let d = &mut settings.datapath;
        if let Some(mode) = self.datapath_mode {
            d.mode = mode;
        }
        if let Some(dir) = &self.pin_dir {
            d.pin_dir = dir.clone();
        }
        if let Some(cgroup) = &self.cgroup {
            d.cgroup = Some(cgroup.clone());
        }
        if !self.interfaces.is_empty() {
            d.interfaces = self.interfaces.clone();
        }
        d.sk_msg |= self.sk_msg;
    }
}

/// Sets in `new` every start-up-only setting back to its `running` value and
/// names those a reload tried to change: the datapath section (mode, pins,
/// cgroup, interfaces, sk_msg) and the prefix index capacity.
pub fn keep_restart_only(running: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if new.datapath != running.datapath {
        changed.push("datapath");
        new.datapath = running.datapath.clone();
    }
    let capacity = running.prefix.index_capacity_blocks;
    if new.prefix.index_capacity_blocks != capacity {
        changed.push("prefix_cache.index_capacity_blocks");
        new.prefix.index_capacity_blocks = capacity;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatapathMode, settings_from_yaml as settings};

    #[test]
    fn flags_win_over_the_file_every_time() {
        let overrides = Overrides {
            default_strategy: Some(Strategy::RoundRobin),
            datapath_mode: Some(DatapathMode::Off),
            interfaces: vec!["lo".into()],
            ..Default::default()
        };
        for yaml in [
            "default_strategy: prefix-cache\ndatapath:\n  mode: required\n",
            "datapath:\n  interfaces: [eth0]\n",
        ] {
            let mut s = settings(yaml);
            overrides.apply(&mut s);
            assert_eq!(s.default_strategy, Strategy::RoundRobin.into());
            assert_eq!(s.datapath.mode, DatapathMode::Off);
            assert_eq!(s.datapath.interfaces, ["lo"]);
        }
    }

    #[test]
    fn restart_only_settings_are_kept_and_named() {
        let running = settings("datapath:\n  mode: off\n");
        let mut same = settings("datapath:\n  mode: off\nmax_body_bytes: 10\n");
        assert!(keep_restart_only(&running, &mut same).is_empty());
        let mut changed = settings(
            "datapath:\n  mode: required\nprefix_cache:\n  index_capacity_blocks: 10\nmax_body_bytes: 10\n",
        );
        assert_eq!(
            keep_restart_only(&running, &mut changed),
            ["datapath", "prefix_cache.index_capacity_blocks"]
        );
        assert_eq!(changed.datapath, running.datapath);
        assert_eq!(changed.max_body_bytes, 10, "the rest still applies");
    }
}
