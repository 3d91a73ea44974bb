use std::process::ExitCode;

use clap::Parser;
use steer_agent::cli::{Cli, Command};
use steer_agent::run::{RunError, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    steer_agent::telemetry::init_logging();
    let threads = match &cli.command {
        Command::Run(args) => args.threads,
        Command::Maps { pin_dir, json } => return print_maps(pin_dir, *json),
        Command::Doctor { pin_dir, json } => return doctor(pin_dir, *json),
    };
    // One thread serves thousands of streams and avoids cross-thread wake-ups.
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("steer-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Maps { .. } | Command::Doctor { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("steer-agent: {error:#}");
            match error {
                RunError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn print_maps(pin_dir: &std::path::Path, json: bool) -> ExitCode {
    match steer_agent::datapath::inspect::dump(pin_dir) {
        Ok(dump) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&dump).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(dump) => {
            print!("{}", dump.table());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("steer-agent maps: {}", steer_agent::datapath::chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn doctor(pin_dir: &std::path::Path, json: bool) -> ExitCode {
    let checks = steer_agent::datapath::doctor::run(pin_dir);
    let ok = checks.iter().all(|c| c.ok);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).unwrap_or_default()
        );
    } else {
        for c in &checks {
            println!(
                "{} {:<12} {}",
                if c.ok { "ok     " } else { "MISSING" },
                c.name,
                c.detail
            );
        }
        println!(
            "\n{}",
            if ok {
                "eBPF datapath can run here."
            } else {
                "eBPF datapath cannot run here as is: the agent will run header-only (routing via headers)."
            }
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
