//! The proxy routers users pick instead of Envoy + Steer, run on the same
//! mock engines in the same bench run: PyPI `vllm-router` and `sglang-router`
//! (Rust inside), pinned, installed into `target/bench-venv`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use steer_e2e::{Client, chat_body};
use tokio::process::{Child, Command};

use crate::{root, sh};

/// (PyPI requirement, console script).
const PEERS: [(&str, &str); 2] = [
    ("vllm-router==0.1.17", "vllm-router"),
    ("sglang-router==0.3.2", "sglang-router"),
];

fn venv() -> PathBuf {
    root().join("target/bench-venv")
}

/// Installs both routers (pinned) unless the venv already has them.
pub fn install() -> Result<()> {
    let venv = venv();
    let marker = venv.join(".steer-peers");
    let wanted = PEERS.map(|(req, _)| req).join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(());
    }
    let path = venv.to_string_lossy().into_owned();
    sh("python3", &["-m", "venv", &path])?;
    let pip = format!("{path}/bin/pip");
    let mut args = vec!["install", "--quiet", "--disable-pip-version-check"];
    args.extend(PEERS.map(|(req, _)| req));
    sh(&pip, &args).context("installing the peer routers from PyPI")?;
    std::fs::write(marker, wanted)?;
    Ok(())
}

/// A running peer router; stopped (by PID) when dropped.
pub struct Peer {
    pub addr: SocketAddr,
    child: Child,
}

impl Peer {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Which router.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Vllm,
    Sglang,
}

impl Kind {
    /// Their spellings of the warning log level differ.
    fn warn_level(self) -> &'static str {
        match self {
            Self::Vllm => "warning",
            Self::Sglang => "warn",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vllm => "vllm-router",
            Self::Sglang => "sglang-router",
        }
    }
}

/// Starts `kind` with `policy` over `engines` (serving model `model`) and
/// waits until a chat request through it succeeds (at most 60 s). Its log
/// goes to `target/bench/peers/<name>-<policy>.log`.
pub async fn start(kind: Kind, policy: &str, engines: &[SocketAddr], model: &str) -> Result<Peer> {
    let free_port = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    // Both also serve Prometheus metrics, on a fixed default port unless told.
    let (port, metrics_port) = (free_port()?, free_port()?);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let bin = venv().join("bin").join(kind.name());
    let mut cmd = Command::new(&bin);
    if let Kind::Sglang = kind {
        cmd.arg("launch");
    }
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--worker-urls")
        .args(engines.iter().map(|e| format!("http://{e}")))
        .args(["--policy", policy, "--log-level", kind.warn_level()])
        .args(["--prometheus-host", "127.0.0.1"])
        .args(["--prometheus-port", &metrics_port.to_string()]);
    let log_dir = root().join("target/bench/peers");
    std::fs::create_dir_all(&log_dir)?;
    let log = std::fs::File::create(log_dir.join(format!("{}-{policy}.log", kind.name())))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (cargo xtask bench installs it)", bin.display()))?;
    let mut peer = Peer { addr, child };
    wait_ready(&mut peer, model, &bin).await?;
    Ok(peer)
}

async fn wait_ready(peer: &mut Peer, model: &str, bin: &Path) -> Result<()> {
    let client = Client::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = chat_body(model, "ready?", false, 1);
    loop {
        let attempt = client.post(peer.addr, "/v1/chat/completions", &[], body.clone());
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), attempt).await
            && reply.status == 200
        {
            return Ok(());
        }
        if let Some(status) = peer.child.try_wait()? {
            bail!(
                "{} exited before serving ({status}; log: target/bench/peers/)",
                bin.display()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} on {} did not serve a chat request within 60 s (log: target/bench/peers/)",
                bin.display(),
                peer.addr
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
