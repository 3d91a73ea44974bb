//! A small network of test hosts for privileged datapath tests: each "pod"
//! is a network namespace joined to the host by a veth pair, plus a cgroup
//! for the steered clients and a private bpffs pin directory. Everything is
//! removed when the lab is dropped, also when a test fails.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Whether privileged tests can run; under CI they must (the caller fails).
pub fn privileged() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if cgroup2_root().is_none() {
        return Err("no cgroup v2 mount".into());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        return Err("no /sys/fs/bpf".into());
    }
    Ok(())
}

/// Skips (prints why) outside CI; panics under `CI=true`.
pub fn require_privileges(test: &str) -> bool {
    match privileged() {
        Ok(()) => true,
        Err(reason) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: privileged test cannot run under CI: {reason}"
            );
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

pub fn cgroup2_root() -> Option<PathBuf> {
    steer_host::cgroup2_root()
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub netns: String,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub ip: Ipv4Addr,
}

impl Pod {
    /// `nsenter` prefix that runs a command inside this pod's netns without
    /// hiding /sys/fs/bpf (unlike `ip netns exec`).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program);
        cmd
    }

    /// Congests the link: [`Pod::shape_link`] plus a bulk upload from outside
    /// any steered cgroup that keeps the bucket full. Bounded: it stops after
    /// 60 s or when the returned guard is dropped.
    pub async fn congest(&self, kbit: u32) -> Result<AbortOnDrop> {
        self.shape_link(kbit)?;
        let pod = std::net::SocketAddr::from((self.ip, 8000));
        Ok(AbortOnDrop(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let Ok(mut conn) = tokio::net::TcpStream::connect(pod).await else {
                return;
            };
            let head =
                b"POST /v1/completions HTTP/1.1\r\nhost: pod\r\ncontent-length: 100000000\r\n\r\n";
            let chunk = vec![b' '; 64 << 10];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            if conn.write_all(head).await.is_err() {
                return;
            }
            while tokio::time::Instant::now() < deadline {
                if conn.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        })))
    }

    /// Slows the host -> pod direction of the link to `kbit` with a token
    /// bucket. (This kernel has no netem: delay comes from queueing behind
    /// traffic that fills the bucket, i.e. a congested link.)
    pub fn shape_link(&self, kbit: u32) -> Result<()> {
        run(
            "tc",
            &[
                "qdisc",
                "replace",
                "dev",
                &self.host_if,
                "root",
                "tbf",
                "rate",
                &format!("{kbit}kbit"),
                "burst",
                "4kb",
                "latency",
                "200ms",
            ],
        )
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
pub struct Lab {
    pub tag: String,
    pub pods: Vec<Pod>,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
}

impl Lab {
    /// `pods` namespaces on 10.200.<n>.0/24 (lab-unique n), a cgroup and a pin dir.
    pub fn new(pods: usize) -> Result<Self> {
        assert!(pods <= 2, "subnet plan holds two pods per lab");
        static LABS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let lab_no = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
        let pid = std::process::id();
        // Unique per process and per lab: tests run labs in parallel.
        let tag = format!("st{}x{lab_no}", pid % 10_000);
        let subnet_base = (pid % 10) as u8 * 20 + lab_no * 2;
        let cgroup = cgroup2_root()
            .context("cgroup2")?
            .join(format!("steer-test-{tag}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/steer-test-{tag}"));
        let mut lab = Self {
            tag: tag.clone(),
            pods: Vec::new(),
            cgroup,
            pin_dir,
        };
        lab.cleanup();
        std::fs::create_dir_all(&lab.cgroup).context("creating test cgroup")?;
        for i in 0..pods {
            let n = subnet_base + i as u8 + 20;
            let pod = Pod {
                netns: format!("{tag}p{i}"),
                host_if: format!("{tag}h{i}"),
                host_ip: Ipv4Addr::new(10, 200, n, 1),
                ip: Ipv4Addr::new(10, 200, n, 2),
            };
            let ns = format!("--net=/run/netns/{}", pod.netns);
            run("ip", &["netns", "add", &pod.netns])?;
            lab.pods.push(pod.clone());
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &pod.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &pod.netns,
                ],
            )?;
            run(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/24", pod.host_ip),
                    "dev",
                    &pod.host_if,
                ],
            )?;
            run("ip", &["link", "set", &pod.host_if, "up"])?;
            run(
                "nsenter",
                &[
                    &ns,
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", pod.ip),
                    "dev",
                    "eth0",
                ],
            )?;
            run("nsenter", &[&ns, "ip", "link", "set", "eth0", "up"])?;
            run("nsenter", &[&ns, "ip", "link", "set", "lo", "up"])?;
            run(
                "nsenter",
                &[
                    &ns,
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &pod.host_ip.to_string(),
                ],
            )?;
        }
        Ok(lab)
    }

    /// A VIP on pod 0's link: if steering ever failed, a connect to it stays
    /// on our own veth (nothing leaves the host).
    pub fn vip(&self, port: u16) -> std::net::SocketAddrV4 {
        let ip = self.pods[0].host_ip.octets();
        std::net::SocketAddrV4::new(Ipv4Addr::new(ip[0], ip[1], ip[2], 250), port)
    }

    /// Makes `cmd` start inside the lab cgroup (steered by connect4).
    pub fn in_cgroup_tokio(&self, cmd: &mut tokio::process::Command) {
        in_cgroup(cmd, &self.cgroup);
    }

    fn cleanup(&self) {
        // Processes left in the cgroup would keep it busy.
        if let Ok(procs) = std::fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "Drop is synchronous; runs once per lab"
            )]
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = Command::new("rm").arg("-rf").arg(&self.pin_dir).status();
        for i in 0..8 {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}p{i}", self.tag)])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}h{i}", self.tag)])
                .output();
        }
    }
}

impl Lab {
    /// A zero-delay mock engine serving model `m` on each pod's `ip:8000`,
    /// named `pod-<i>` (its `x-mock-engine` header).
    pub async fn start_engines(&self, profile: &str) -> Result<Vec<crate::Proc>> {
        let bin = crate::binary_dir(profile).join("mock-engine");
        let mut engines = Vec::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let mut cmd = tokio::process::Command::from(pod.command(&bin));
            cmd.args([
                "--addr",
                &format!("{}:8000", pod.ip),
                "--model",
                "m",
                "--name",
                &format!("pod-{i}"),
            ]);
            cmd.args(["--prefill-us-per-token", "0", "--decode-us-per-token", "0"]);
            engines.push(crate::Proc::spawn_command(cmd, &bin, "listening on").await?);
        }
        Ok(engines)
    }

    /// An agent config for this lab: model `m` on every pod with VIP
    /// `vip(8000)`, the datapath required on the lab cgroup, pin dir and pod
    /// links; `extra_models` is raw YAML appended under `models:`.
    pub fn write_config(&self, path: &Path, extra_models: &str) -> Result<()> {
        let endpoints: Vec<String> = self
            .pods
            .iter()
            .map(|p| format!("\"{}:8000\"", p.ip))
            .collect();
        let interfaces: Vec<&str> = self.pods.iter().map(|p| p.host_if.as_str()).collect();
        let yaml = format!(
            "default_strategy: round-robin\nscrape:\n  interval_ms: 50\n  timeout_ms: 500\n  unhealthy_after: 3\n\
             models:\n  m:\n    endpoints: [{}]\n    vip: \"{}\"\n{extra_models}\
             datapath:\n  mode: required\n  pin_dir: {}\n  cgroup: {}\n  interfaces: [{}]\n",
            endpoints.join(", "),
            self.vip(8000),
            self.pin_dir.display(),
            self.cgroup.display(),
            interfaces.join(", "),
        );
        std::fs::write(path, yaml).context("writing the lab config")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Which mock engine answers `GET /health` at `addr` (its `x-mock-engine`
/// header), asked by `curl` started inside `cgroup` when given (so the
/// kernel's connect4 steering applies), or the failure.
pub async fn engine_behind(
    addr: std::net::SocketAddrV4,
    cgroup: Option<&Path>,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-s",
        "-m",
        "2",
        "-o",
        "/dev/null",
        "-D",
        "-",
        &format!("http://{addr}/health"),
    ]);
    if let Some(cgroup) = cgroup {
        in_cgroup(&mut cmd, cgroup);
    }
    let out = cmd.output().await.map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-mock-engine:")
                .map(|v| v.trim().to_owned())
        })
        .ok_or_else(|| format!("curl exit {:?}", out.status.code()))
}

/// Makes `cmd` start inside `cgroup` (a cgroup v2 directory).
pub fn in_cgroup(cmd: &mut tokio::process::Command, cgroup: &Path) {
    let procs = cgroup.join("cgroup.procs");
    // SAFETY: only open/write/close between fork and exec.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
}
