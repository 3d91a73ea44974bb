use std::process::ExitCode;

use clap::Parser;
use steer_agent::cli::{Cli, Command};
use steer_agent::run::{RunError, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    steer_agent::telemetry::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("steer-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
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
