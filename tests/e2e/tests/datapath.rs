//! The eBPF datapath end to end, with real traffic between network
//! namespaces (privileged: root in CI; skipped with a reason elsewhere).

mod common;

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use steer_e2e::netlab::{Lab, engine_behind, require_privileges};
use steer_e2e::{
    Client, DEFAULT_ENVOY, Envoy, EnvoyConfig, Proc, binary_dir, chat_body, ensure_built,
    metric_value,
};

struct Rig {
    lab: Lab,
    _engines: Vec<Proc>,
    config: std::path::PathBuf,
    vip: SocketAddrV4,
    empty_vip: SocketAddrV4,
}

impl Rig {
    async fn new() -> Self {
        ensure_built("debug").unwrap();
        let lab = Lab::new(2).unwrap();
        let engines = lab.start_engines("debug").await.unwrap();
        let vip = lab.vip(8000);
        let empty_vip = lab.vip(8001);
        let config = std::env::temp_dir().join(format!("steer-datapath-{}.yaml", lab.tag));
        lab.write_config(
            &config,
            &format!("  nobody:\n    endpoints: []\n    vip: \"{empty_vip}\"\n"),
        )
        .unwrap();
        Self {
            lab,
            _engines: engines,
            config,
            vip,
            empty_vip,
        }
    }

    /// The agent, inside the lab cgroup so its own scrapes are measured.
    async fn agent(&self, extra: &[&str]) -> Proc {
        let bin = binary_dir("debug").join("steer-agent");
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(["run", "--config", &self.config.display().to_string()]);
        cmd.args([
            "--ext-proc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--shutdown-grace-seconds",
            "0",
        ]);
        cmd.args(extra);
        self.lab.in_cgroup_tokio(&mut cmd);
        Proc::spawn_command(cmd, &bin, "steer-agent listening")
            .await
            .unwrap()
    }

    /// Real Envoy from the shipped `envoy.yaml`, in front of `agent`.
    async fn envoy(&self, agent: &Proc) -> Envoy {
        let doc = steer_e2e::envoy::render(EnvoyConfig::OneWait, agent.addrs[0]).unwrap();
        let dir = std::env::temp_dir().join(format!("steer-datapath-envoy-{}", self.lab.tag));
        Envoy::start(DEFAULT_ENVOY, &doc, &dir, &EnvoyConfig::OneWait.path())
            .await
            .unwrap()
    }

    /// Which engine answers at `addr`, asked from inside (or outside) the lab cgroup.
    async fn who_answers(&self, addr: SocketAddrV4, in_cgroup: bool) -> Result<String, String> {
        engine_behind(addr, in_cgroup.then_some(self.lab.cgroup.as_path())).await
    }

    fn maps(&self) -> serde_json::Value {
        let out = std::process::Command::new(binary_dir("debug").join("steer-agent"))
            .args([
                "maps",
                "--json",
                "--pin-dir",
                &self.lab.pin_dir.display().to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "maps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn pod_row(&self, i: usize) -> serde_json::Value {
        let pod = format!("{}:8000", self.lab.pods[i].ip);
        self.maps()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pod"] == pod.as_str())
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

async fn route_once(client: &Client, gateway: std::net::SocketAddr, strategy: &str) -> String {
    let reply = client
        .post(
            gateway,
            "/v1/chat/completions",
            &[("routing-strategy", strategy)],
            chat_body("m", "hi", false, 1),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.header("x-mock-engine").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect4_steers_a_vip_to_the_agents_choice() {
    if !require_privileges("connect4_steers_a_vip_to_the_agents_choice") {
        return;
    }
    let rig = Rig::new().await;
    let agent = rig.agent(&["--unpin"]).await;
    let envoy = rig.envoy(&agent).await;
    let client = Client::default();

    // Each round-robin decision moves the VIP; new connections follow it.
    for _ in 0..4 {
        let chosen = route_once(&client, envoy.listener, "round-robin").await;
        let followed = common::eventually(3, || async {
            rig.who_answers(rig.vip, true).await.as_deref() == Ok(&chosen)
        })
        .await;
        assert!(followed, "VIP connections follow the decision for {chosen}");
    }
    // The application sees the VIP as its peer (getpeername reverse NAT).
    let script = format!(
        "import socket; s = socket.create_connection(('{}', {}), 2); print('%s:%d' % s.getpeername())",
        rig.vip.ip(),
        rig.vip.port()
    );
    let mut py = tokio::process::Command::new("python3");
    py.args(["-c", &script]);
    rig.lab.in_cgroup_tokio(&mut py);
    let out = py.output().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        rig.vip.to_string(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A VIP without backends fails fast instead of leaking.
    let started = std::time::Instant::now();
    assert!(rig.who_answers(rig.empty_vip, true).await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "refused at once, took {:?}",
        started.elapsed()
    );

    // Non-VIP traffic from the cgroup is untouched; so is the VIP outside it.
    let pod1 = SocketAddrV4::new(rig.lab.pods[1].ip, 8000);
    for _ in 0..3 {
        assert_eq!(rig.who_answers(pod1, true).await.as_deref(), Ok("pod-1"));
    }
    assert!(
        rig.who_answers(rig.vip, false).await.is_err(),
        "outside the cgroup the VIP is not steered"
    );

    let counters = rig.maps()["counters"].clone();
    let get = |name: &str| {
        counters
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c[0] == name)
            .map(|c| c[1].as_u64().unwrap())
            .unwrap()
    };
    assert!(get("connect_rewrite") >= 5);
    assert!(get("connect_no_backend") >= 1);
    assert!(get("revnat_hit") >= 1);
    common::assert_idle_at(agent.addrs[1]).await;
    drop(envoy);
    assert!(agent.terminate().await.is_some_and(|s| s.success()));
    assert!(
        !rig.lab.pin_dir.join("STEER_VIPS").exists(),
        "--unpin removed the pins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_rtt_drives_least_latency_and_tc_counts_bytes() {
    if !require_privileges("kernel_rtt_drives_least_latency_and_tc_counts_bytes") {
        return;
    }
    let rig = Rig::new().await;
    // Congest pod 1's link: a slow token bucket kept full by a bulk upload.
    let bulk = rig.lab.pods[1].congest(800).await.unwrap();
    let agent = rig.agent(&["--unpin"]).await;
    let envoy = rig.envoy(&agent).await;
    let client = Client::default();

    // The agent's own scrapes (every 50 ms) give sock_ops RTT samples.
    let measured = common::eventually(10, || async {
        let (a, b) = (rig.pod_row(0), rig.pod_row(1));
        a["rtt_samples"].as_u64().unwrap_or(0) > 0 && b["srtt_us"].as_u64().unwrap_or(0) > 20_000
    })
    .await;
    assert!(
        measured,
        "RTT map filled: {} / {}",
        rig.pod_row(0),
        rig.pod_row(1)
    );
    let fast = rig.pod_row(0)["srtt_us"].as_u64().unwrap();
    assert!(fast < 10_000, "undelayed pod RTT {fast} us");
    assert!(rig.pod_row(0)["connects"].as_u64().unwrap() >= 1);

    // least-latency prefers the pod without the added delay.
    let metrics = agent.addrs[1];
    let srtt_exported = common::eventually(5, || async {
        let m = client.metrics(metrics).await.unwrap();
        metric_value(
            &m,
            "steer_kernel_pod_srtt_microseconds",
            &[("pod", &format!("{}:8000", rig.lab.pods[1].ip))],
        )
        .is_some_and(|v| v > 20_000.0)
    })
    .await;
    assert!(srtt_exported, "kernel RTT exported as a metric");
    for _ in 0..10 {
        assert_eq!(
            route_once(&client, envoy.listener, "least-latency").await,
            "pod-0"
        );
    }

    // TC counts the bytes sent to pod 0 (scrapes add a little: tolerance).
    let before = rig.pod_row(0)["tx_bytes"].as_u64().unwrap();
    let prompt = "x".repeat(200_000);
    let reply = client
        .post(
            envoy.listener,
            "/v1/chat/completions",
            &[("routing-strategy", "least-latency")],
            chat_body("m", &prompt, false, 1),
        )
        .await
        .unwrap();
    assert_eq!(reply.header("x-mock-engine"), Some("pod-0"));
    let after = rig.pod_row(0)["tx_bytes"].as_u64().unwrap();
    let sent = after - before;
    assert!(
        (200_000..400_000).contains(&sent),
        "TC counted {sent} bytes for a 200 kB body"
    );
    drop(bulk);
    common::assert_idle_at(agent.addrs[1]).await;
    drop(envoy);
    agent.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_steering_and_unpin_cleans_up() {
    if !require_privileges("restart_keeps_steering_and_unpin_cleans_up") {
        return;
    }
    let rig = Rig::new().await;
    let agent = rig.agent(&[]).await;
    let envoy = rig.envoy(&agent).await;
    let client = Client::default();
    let chosen = route_once(&client, envoy.listener, "round-robin").await;
    assert!(
        common::eventually(3, || async {
            rig.who_answers(rig.vip, true).await.as_deref() == Ok(&chosen)
        })
        .await
    );
    common::assert_idle_at(agent.addrs[1]).await;
    drop(envoy);
    assert!(agent.terminate().await.is_some_and(|s| s.success()));

    // Agent gone: pins and programs stay, the node stays steered.
    assert!(rig.lab.pin_dir.join("STEER_VIPS").exists());
    assert!(rig.lab.pin_dir.join("links").read_dir().unwrap().count() >= 4);
    assert_eq!(
        rig.who_answers(rig.vip, true).await.as_deref(),
        Ok(chosen.as_str())
    );
    let bpftool = std::process::Command::new("bpftool")
        .args([
            "map",
            "dump",
            "pinned",
            &rig.lab.pin_dir.join("STEER_VIPS").display().to_string(),
        ])
        .output();
    match bpftool {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("backends") && text.contains("chosen"),
                "bpftool shows field names:\n{text}"
            );
        }
        Err(e) => assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "bpftool missing: {e}"
        ),
    }

    // A restarted agent reuses the maps: the VIP entry is there before any decision.
    let agent = rig.agent(&["--unpin"]).await;
    let vips = rig.maps()["vips"].clone();
    assert!(
        vips.as_array()
            .unwrap()
            .iter()
            .any(|v| v["vip"] == rig.vip.to_string().as_str())
    );
    assert_eq!(
        rig.who_answers(rig.vip, true).await.as_deref(),
        Ok(chosen.as_str())
    );
    assert!(agent.terminate().await.is_some_and(|s| s.success()));
    assert!(
        !rig.lab.pin_dir.join("STEER_VIPS").exists(),
        "--unpin removed the maps"
    );
    assert!(
        !rig.lab.pin_dir.join("links").exists(),
        "--unpin removed the links"
    );
    assert!(
        rig.who_answers(rig.vip, true).await.is_err(),
        "programs detached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bpf_privileges_the_agent_runs_header_only() {
    if !require_privileges("without_bpf_privileges_the_agent_runs_header_only") {
        return;
    }
    let rig = Rig::new().await;
    let bin = binary_dir("debug").join("steer-agent");
    let drop_caps = "--drop=cap_bpf,cap_sys_admin,cap_net_admin,cap_perfmon";
    let agent_cmd = |mode: &str| {
        let mut cmd = tokio::process::Command::new("capsh");
        cmd.args([drop_caps, "--", "-c"]);
        cmd.arg(format!(
            "exec {} run --config {} --datapath {mode} --ext-proc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --shutdown-grace-seconds 0",
            bin.display(),
            rig.config.display()
        ));
        cmd
    };
    // auto: one warning, header-only, still routing.
    let agent = Proc::spawn_command(
        agent_cmd("auto"),
        Path::new("steer-agent"),
        "steer-agent listening",
    )
    .await
    .unwrap();
    let client = Client::default();
    let ready = client
        .get(agent.addrs[1], "/readyz")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["mode"], "header-only");
    assert!(ready["datapath_reason"].as_str().unwrap().len() > 5);
    let metrics = client.metrics(agent.addrs[1]).await.unwrap();
    assert_eq!(
        metric_value(&metrics, "steer_datapath_mode", &[("mode", "header-only")]),
        Some(1.0)
    );
    let envoy = rig.envoy(&agent).await;
    let engine = route_once(&client, envoy.listener, "round-robin").await;
    assert!(engine.starts_with("pod-"));
    common::assert_idle_at(agent.addrs[1]).await;
    drop(envoy);
    agent.terminate().await;
    // required: refuses to start, with the reason.
    let out = agent_cmd("required").output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("eBPF datapath required"));
}

/// Every capability name capsh knows (Linux 6.x), for dropping all but a few.
const ALL_CAPS: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// The capabilities the shipped DaemonSet adds (after `drop: [ALL]`), as
/// capsh names (`BPF` → `cap_bpf`).
fn daemonset_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    let agent = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("steer-agent"))
        .expect("steer-agent container");
    let caps = &agent["securityContext"]["capabilities"];
    assert_eq!(caps["drop"][0].as_str(), Some("ALL"));
    caps["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| format!("cap_{}", c.as_str().unwrap().to_lowercase()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_capabilities_are_enough_for_the_agent_and_doctor_agrees() {
    if !require_privileges("daemonset_capabilities_are_enough_for_the_agent_and_doctor_agrees") {
        return;
    }
    let kept = daemonset_capabilities();
    assert_eq!(kept, ["cap_bpf", "cap_net_admin"], "the measured set");
    let others: Vec<&str> = ALL_CAPS
        .iter()
        .copied()
        .filter(|c| !kept.iter().any(|k| k == c))
        .collect();
    let drop_others = format!("--drop={}", others.join(","));
    let rig = Rig::new().await;
    let bin = binary_dir("debug").join("steer-agent");
    // uid 0 with exactly the DaemonSet's capabilities, like the pod.
    let with_caps = |command: String| {
        let mut cmd = tokio::process::Command::new("capsh");
        cmd.args([drop_others.as_str(), "--", "-c"]).arg(command);
        cmd
    };
    let doctor = with_caps(format!(
        "exec {} doctor --json --pin-dir {}",
        bin.display(),
        rig.lab.pin_dir.display()
    ))
    .output()
    .await
    .unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|_| panic!("doctor JSON: {}", String::from_utf8_lossy(&doctor.stdout)));
    let privileges = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "privileges")
        .unwrap();
    assert_eq!(privileges["ok"], true, "doctor: {privileges}");
    let mut cmd = with_caps(format!(
        "exec {} run --config {} --datapath required --ext-proc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --shutdown-grace-seconds 0",
        bin.display(),
        rig.config.display()
    ));
    rig.lab.in_cgroup_tokio(&mut cmd);
    let agent = Proc::spawn_command(cmd, Path::new("steer-agent"), "steer-agent listening")
        .await
        .expect("the agent starts in kernel mode with the DaemonSet's capabilities");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().unwrap())).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(
        cap_eff, "0000008000001000",
        "exactly CAP_BPF + CAP_NET_ADMIN"
    );
    let ready = Client::default()
        .get(agent.addrs[1], "/readyz")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["mode"], "kernel", "{ready}");
    let envoy = rig.envoy(&agent).await;
    let engine = route_once(&Client::default(), envoy.listener, "round-robin").await;
    assert!(engine.starts_with("pod-"));
    common::assert_idle_at(agent.addrs[1]).await;
    drop(envoy);
    agent.terminate().await;
}
