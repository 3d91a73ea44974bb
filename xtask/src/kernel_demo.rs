//! The demo's kernel half (root only): model VIPs steered by connect4 for
//! processes in a demo cgroup, kernel RTT per pod, and where to look.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use steer_e2e::{Client, Stack, StackOptions, binary_dir};

const VIPS: [(&str, &str); 2] = [("qwen", "127.0.0.100:8000"), ("llama", "127.0.0.101:8000")];

pub struct KernelDemo {
    cgroup: PathBuf,
    pin_dir: PathBuf,
}

impl KernelDemo {
    /// Some when this machine can run the datapath (root, bpffs, cgroup v2,
    /// object embedded); otherwise says why and the demo stays header-only.
    pub fn prepare() -> Option<Self> {
        if let Err(reason) = steer_e2e::netlab::privileged() {
            println!(
                "(kernel datapath part skipped: {reason}; run as root to see VIP steering and kernel RTT)\n"
            );
            return None;
        }
        let doctor = Command::new(binary_dir("release").join("steer-agent"))
            .arg("doctor")
            .output();
        if !doctor.as_ref().is_ok_and(|o| o.status.success()) {
            println!(
                "(kernel datapath part skipped: `steer-agent doctor` reports something missing)\n"
            );
            return None;
        }
        let cgroup = steer_e2e::netlab::cgroup2_root()?.join("steer-demo");
        let pin_dir = PathBuf::from("/sys/fs/bpf/steer-demo");
        let _ = Command::new("rm").arg("-rf").arg(&pin_dir).status();
        std::fs::create_dir_all(&cgroup).ok()?;
        Some(Self { cgroup, pin_dir })
    }

    pub fn configure(&self, options: &mut StackOptions) {
        options.vips = VIPS
            .iter()
            .map(|(m, v)| ((*m).to_owned(), (*v).to_owned()))
            .collect();
        options.extra_config = format!(
            "datapath:\n  mode: auto\n  pin_dir: {}\n  cgroup: {}\n  interfaces: [lo]\n",
            self.pin_dir.display(),
            self.cgroup.display()
        );
        // The agent lives in the demo cgroup: its scrapes give per-pod RTT.
        options.agent_cgroup = Some(self.cgroup.clone());
        options.datapath = true;
        options.agent_args.push("--unpin".into());
    }

    pub async fn show(&self, stack: &Stack, client: &Client) -> Result<()> {
        let ready = client.get(stack.metrics(), "/readyz").await?.json()?;
        println!("\nKernel datapath: mode {}", ready["mode"]);
        if ready["mode"] != "kernel" {
            println!("  (not active: {})", ready["datapath_reason"]);
            return Ok(());
        }
        for (model, vip) in VIPS {
            // One decision through the gateway, then plain connections to the VIP.
            let body = crate::workload::tiny_chat(model);
            let routed = client
                .post(
                    stack.gateway(),
                    "/v1/chat/completions",
                    &[("routing-strategy", "least-request")],
                    body,
                )
                .await?;
            let chosen = routed.header("x-mock-engine").unwrap_or("?").to_owned();
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            let vip_addr = vip.parse()?;
            let mut answers = Vec::new();
            for _ in 0..3 {
                let who = steer_e2e::netlab::engine_behind(vip_addr, Some(&self.cgroup)).await;
                answers.push(who.unwrap_or_else(|e| format!("no answer ({e})")));
            }
            println!(
                "  {model:<6} VIP {vip}: agent chose {chosen}; 3 plain connects from the demo cgroup reached {}",
                answers.join(", ")
            );
        }
        let maps = Command::new(binary_dir("release").join("steer-agent"))
            .args(["maps", "--pin-dir", &self.pin_dir.display().to_string()])
            .output()?;
        println!("\n{}", String::from_utf8_lossy(&maps.stdout));
        println!(
            "  sudo bpftool map dump pinned {}/STEER_VIPS     # field names via BTF",
            self.pin_dir.display()
        );
        println!(
            "  sudo target/release/steer-agent maps --pin-dir {}",
            self.pin_dir.display()
        );
        Ok(())
    }

    pub fn cleanup(self) {
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = Command::new("rm").arg("-rf").arg(&self.pin_dir).status();
    }
}
