//! Child processes that die with their handle (and with a failing test).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where cargo put the binaries of `profile` ("debug" or "release").
pub fn binary_dir(profile: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target")
                .canonicalize()
                .unwrap_or_else(|_| PathBuf::from("target"))
        });
    target.join(profile)
}

/// Builds the three binaries once per process, so a plain `cargo test` works
/// without a separate build step.
pub fn ensure_built(profile: &str) -> Result<()> {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|p| p == profile) {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "steer-agent",
        "-p",
        "mock-engine",
        "-p",
        "steer-e2e",
        "--bins",
    ]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the test binaries failed: {status}");
    }
    built.push(profile.to_owned());
    Ok(())
}

/// A running child; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    /// Addresses from the ready line, in order (`ip:port` tokens).
    pub addrs: Vec<SocketAddr>,
    child: Child,
}

impl Proc {
    /// Starts `bin` and waits (bounded) for a stdout line containing
    /// `ready_marker`; every `ip:port` on that line is recorded.
    pub async fn spawn(bin: &Path, args: &[String], ready_marker: &str) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Self::spawn_command(cmd, bin, ready_marker).await
    }

    /// Like [`Proc::spawn`] for a prepared command (netns, cgroup, capsh).
    pub async fn spawn_command(mut cmd: Command, bin: &Path, ready_marker: &str) -> Result<Self> {
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (build it first: cargo build)", bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(ready_marker) {
                    return Ok::<_, std::io::Error>(Some(line));
                }
            }
            Ok(None)
        })
        .await;
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                bail!("{name} exited before it was ready ({status:?})");
            }
            Ok(Err(e)) => bail!("{name}: reading stdout: {e}"),
            Err(_) => bail!("{name} not ready within 20 s"),
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addrs = line
            .split(|c: char| c.is_whitespace() || c == '=')
            .filter_map(|t| t.parse().ok())
            .collect();
        Ok(Self { name, addrs, child })
    }

    /// Wraps an already spawned child (addresses filled in by the caller).
    pub fn from_child(name: String, child: Child) -> Self {
        Self {
            name,
            addrs: Vec::new(),
            child,
        }
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGKILL (a crash), keeping the handle.
    pub async fn sigkill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub async fn terminate(mut self) -> Option<std::process::ExitStatus> {
        self.stop().await
    }

    /// Like [`Proc::terminate`] without giving up the handle.
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// `steer-agent` arguments for an agent outside a [`Stack`] (a second
/// replica, the soak): `config`, ephemeral loopback ports (printed on its
/// ready line), no datapath, no shutdown grace.
pub fn standalone_agent_args(config: &Path) -> Vec<String> {
    let config = config.display().to_string();
    [
        "run",
        "--config",
        &config,
        "--ext-proc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--datapath",
        "off",
        "--shutdown-grace-seconds",
        "0",
    ]
    .map(String::from)
    .into()
}

/// Writes a YAML config mapping each model to engine addresses.
pub fn write_config(
    path: &Path,
    default_strategy: &str,
    models: &[(&str, Vec<SocketAddr>)],
) -> Result<()> {
    write_config_with(path, default_strategy, models, &[], "")
}

/// Like [`write_config`], with model VIPs and raw top-level YAML appended.
pub fn write_config_with(
    path: &Path,
    default_strategy: &str,
    models: &[(&str, Vec<SocketAddr>)],
    vips: &[(String, String)],
    extra_yaml: &str,
) -> Result<()> {
    // Fast scrapes unless the extra YAML brings its own `scrape:` section.
    let scrape = if extra_yaml.lines().any(|l| l.starts_with("scrape:")) {
        ""
    } else {
        "scrape:\n  interval_ms: 50\n  timeout_ms: 300\n  unhealthy_after: 2\n"
    };
    let mut yaml = format!("default_strategy: {default_strategy}\n{scrape}models:\n");
    for (model, addrs) in models {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        yaml.push_str(&format!(
            "  {model}:\n    endpoints: [{}]\n",
            list.join(", ")
        ));
        if let Some((_, vip)) = vips.iter().find(|(m, _)| m == model) {
            yaml.push_str(&format!("    vip: \"{vip}\"\n"));
        }
    }
    yaml.push_str(extra_yaml);
    // Write then rename so a watching agent never reads a half-written file.
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct StackOptions {
    pub profile: &'static str,
    /// Per engine: (models served, comma-separated; extra mock-engine args).
    pub engines: Vec<(String, Vec<String>)>,
    pub default_strategy: String,
    /// Which shipped Envoy bootstrap, on which Envoy version (default: the newest).
    pub envoy_config: crate::EnvoyConfig,
    pub envoy_version: Option<&'static str>,
    /// Turn on the shipped config's per-request usage observer (off as shipped).
    pub usage_observer: bool,
    /// `--max-streams-per-connection` for the agent and the same bound in
    /// Envoy's `steer_ext_proc` cluster (default: as shipped).
    pub max_streams_per_connection: Option<u32>,
    /// How Envoy reaches the agent (loopback TCP unless told otherwise).
    pub ext_proc_transport: crate::ExtProcTransport,
    pub agent_args: Vec<String>,
    /// Fixed agent (ext_proc, metrics) ports instead of ephemeral ones.
    pub agent_ports: Option<(u16, u16)>,
    /// (model, "ip:port") kernel-steered VIPs.
    pub vips: Vec<(String, String)>,
    /// Raw top-level YAML appended to the config (e.g. a `datapath:` section).
    pub extra_config: String,
    /// Start the agent inside this cgroup (its connections are then measured).
    pub agent_cgroup: Option<PathBuf>,
    /// Let the agent use the eBPF datapath as its config says; otherwise it
    /// runs `--datapath off` so a test never attaches to the host's cgroup.
    pub datapath: bool,
}

/// Engines + agent + a real Envoy (from a shipped bootstrap) on loopback,
/// with a config file the test can rewrite (hot reload).
#[derive(Debug)]
pub struct Stack {
    pub engines: Vec<Proc>,
    pub agent: Proc,
    /// How the agent was started, for [`Stack::restart_agent`].
    agent_args: Vec<String>,
    agent_bin: PathBuf,
    pub envoy: crate::Envoy,
    /// The agent's Unix socket, when Envoy reaches it through one.
    pub ext_proc_socket: Option<PathBuf>,
    /// The certificates, when Envoy reaches the agent over mutual TLS.
    pub certs: Option<crate::TestCerts>,
    pub config: PathBuf,
    pub dir: PathBuf,
}

impl Stack {
    pub async fn start(opts: StackOptions) -> Result<Self> {
        ensure_built(opts.profile)?;
        let bins = binary_dir(opts.profile);
        let dir =
            std::env::temp_dir().join(format!("steer-e2e-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        let mut engines = Vec::new();
        for (i, (model, extra)) in opts.engines.iter().enumerate() {
            let mut args = vec![
                "--addr".into(),
                "127.0.0.1:0".into(),
                "--name".into(),
                format!("engine-{i}"),
            ];
            for m in model.split(',') {
                args.extend(["--model".to_owned(), m.to_owned()]);
            }
            args.extend(extra.iter().cloned());
            engines.push(Proc::spawn(&bins.join("mock-engine"), &args, "listening on").await?);
        }
        let mut models: Vec<(&str, Vec<SocketAddr>)> = Vec::new();
        for ((served, _), engine) in opts.engines.iter().zip(&engines) {
            for model in served.split(',') {
                match models.iter_mut().find(|(m, _)| *m == model) {
                    Some((_, addrs)) => addrs.push(engine.addr()),
                    None => models.push((model, vec![engine.addr()])),
                }
            }
        }
        let config = dir.join("steer.yaml");
        write_config_with(
            &config,
            &opts.default_strategy,
            &models,
            &opts.vips,
            &opts.extra_config,
        )?;
        let (ext_proc_port, metrics_port) = opts.agent_ports.unwrap_or((0, 0));
        use crate::ExtProcTransport;
        let socket =
            (opts.ext_proc_transport == ExtProcTransport::Unix).then(|| dir.join("ext_proc.sock"));
        let certs = match opts.ext_proc_transport {
            ExtProcTransport::MutualTls => Some(crate::TestCerts::make(&dir, "")?),
            _ => None,
        };
        let ext_proc_addr = match &socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("127.0.0.1:{ext_proc_port}"),
        };
        let mut agent_args: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--ext-proc-addr".into(),
            ext_proc_addr,
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--reload-interval-ms".into(),
            "100".into(),
        ];
        if !opts.datapath {
            agent_args.extend(["--datapath".to_owned(), "off".to_owned()]);
        }
        // Tests stop agents at once unless they test the shutdown grace.
        if !opts
            .agent_args
            .iter()
            .any(|a| a == "--shutdown-grace-seconds")
        {
            agent_args.extend(["--shutdown-grace-seconds".to_owned(), "0".to_owned()]);
        }
        if let Some(certs) = &certs {
            agent_args.extend(certs.agent_args());
        }
        if let Some(n) = opts.max_streams_per_connection {
            agent_args.extend(["--max-streams-per-connection".to_owned(), n.to_string()]);
        }
        agent_args.extend(opts.agent_args.iter().cloned());
        let mut agent_cmd = Command::new(bins.join("steer-agent"));
        agent_cmd.args(&agent_args);
        if let Some(cgroup) = &opts.agent_cgroup {
            crate::netlab::in_cgroup(&mut agent_cmd, cgroup);
        }
        let agent = Proc::spawn_command(
            agent_cmd,
            &bins.join("steer-agent"),
            "steer-agent listening",
        )
        .await?;
        let mut doc = crate::envoy::render(opts.envoy_config, agent.addrs[0])?;
        if opts.usage_observer {
            doc = crate::envoy::with_usage_observer(doc)?;
        }
        if let Some(path) = &socket {
            crate::transport::use_unix_socket(&mut doc, path)?;
        }
        if let Some(certs) = &certs {
            crate::transport::use_mutual_tls(&mut doc, agent.addrs[0], certs)?;
        }
        if let Some(n) = opts.max_streams_per_connection {
            crate::transport::set_max_streams_per_connection(&mut doc, n)?;
        }
        let envoy = crate::Envoy::start(
            opts.envoy_version.unwrap_or(crate::DEFAULT_ENVOY),
            &doc,
            &dir,
            &opts.envoy_config.path(),
        )
        .await?;
        Ok(Self {
            engines,
            agent,
            agent_args,
            agent_bin: bins.join("steer-agent"),
            envoy,
            ext_proc_socket: socket,
            certs,
            config,
            dir,
        })
    }

    /// Envoy's HTTP listener: where clients send OpenAI requests.
    pub fn gateway(&self) -> SocketAddr {
        self.envoy.listener
    }

    /// The agent's ext_proc TCP address (not for a Unix-socket stack).
    pub fn ext_proc(&self) -> SocketAddr {
        assert!(
            self.ext_proc_socket.is_none(),
            "the agent listens on a Unix socket"
        );
        self.agent.addrs[0]
    }

    pub fn metrics(&self) -> SocketAddr {
        *self.agent.addrs.last().expect("agent addresses")
    }

    /// Starts the agent again with the same arguments and the addresses the
    /// first one bound (Envoy keeps pointing at them), e.g. after a crash.
    pub async fn restart_agent(&mut self) -> Result<()> {
        let ext_proc = match &self.ext_proc_socket {
            Some(path) => format!("unix:{}", path.display()),
            None => self.ext_proc().to_string(),
        };
        let metrics = self.metrics().to_string();
        let mut args = self.agent_args.clone();
        for i in 1..args.len() {
            match args[i - 1].as_str() {
                "--ext-proc-addr" => args[i] = ext_proc.clone(),
                "--metrics-addr" => args[i] = metrics.clone(),
                _ => {}
            }
        }
        self.agent = Proc::spawn(&self.agent_bin, &args, "steer-agent listening").await?;
        Ok(())
    }

    /// Which engine index listens on `addr`.
    pub fn engine_index(&self, addr: &str) -> Option<usize> {
        self.engines
            .iter()
            .position(|e| e.addr().to_string() == addr)
    }
}

impl Stack {
    /// Stops the agent with SIGTERM (so it can unpin and exit cleanly)
    /// before everything else is killed on drop.
    pub async fn shutdown(mut self) -> Option<std::process::ExitStatus> {
        self.agent.stop().await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
