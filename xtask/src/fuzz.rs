//! `cargo xtask fuzz [--seconds N]`: every libFuzzer target in `fuzz/` (the
//! OpenAI body parser, the usage scanner, the ext_proc state machine, the
//! config loader, the engine-metrics parser) for N seconds each, seeded
//! from the committed corpus `fuzz/corpus/<target>/` (new inputs go to
//! `target/fuzz-corpus/<target>/`, never into the repository). Prints the
//! executions per target and fails on any crash (its input is kept under
//! `fuzz/artifacts/<target>/`).

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{root, sh};

pub const TARGETS: [&str; 5] = [
    "openai_body",
    "usage_scanner",
    "extproc_stream",
    "config_loader",
    "engine_metrics",
];

/// cargo-fuzz, installed from crates.io when missing.
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";

#[derive(Clone, Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (repeatable).
    #[arg(long)]
    pub target: Vec<String>,
}

struct Outcome {
    target: String,
    executions: u64,
    corpus: u64,
    crashed: bool,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.target.is_empty() {
        TARGETS.to_vec()
    } else {
        args.target.iter().map(String::as_str).collect()
    };
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for target in targets {
        outcomes.push(fuzz_one(target, args.seconds)?);
    }
    println!("\n| fuzz target | executions | corpus | crashes |\n|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {} |",
            o.target,
            o.executions,
            o.corpus,
            u8::from(o.crashed)
        );
    }
    let total: u64 = outcomes.iter().map(|o| o.executions).sum();
    let crashes = outcomes.iter().filter(|o| o.crashed).count();
    println!(
        "\nfuzz: {total} executions over {} targets in {:.0} s, {crashes} crashed",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    if crashes > 0 {
        bail!("{crashes} fuzz target(s) crashed: inputs under fuzz/artifacts/");
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        sh("cargo", &["install", "--locked", "--quiet", CARGO_FUZZ])?;
    }
    Ok(())
}

fn fuzz_one(target: &str, seconds: u64) -> Result<Outcome> {
    let root = root();
    let work = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&work)?;
    let seeds = root.join("fuzz/corpus").join(target);
    eprintln!("+ fuzz {target} for {seconds} s");
    let output = Command::new("cargo")
        .current_dir(root.join("fuzz"))
        // libFuzzer's sanitizer flags need unstable options; the eBPF object
        // is not part of what is fuzzed.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("STEER_SKIP_EBPF", "1")
        .args(["fuzz", "run", "-O", target])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .output()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let crashed = !output.status.success();
    if crashed {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    let executions = stat("stat::number_of_executed_units:").unwrap_or(0);
    if !crashed && executions == 0 {
        bail!("fuzz {target}: no executions reported:\n{log}");
    }
    let corpus = std::fs::read_dir(&work).map_or(0, |d| d.count() as u64);
    Ok(Outcome {
        target: target.to_owned(),
        executions,
        corpus,
        crashed,
    })
}
