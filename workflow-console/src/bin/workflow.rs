//! `workflow`: see and steer durable workflows on a database from the shell.
//! `workflow --help` lists the commands.

use std::process::ExitCode;

use clap::Parser;
use workflow_console::cli::{run, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs (the console's address, warnings) go to stderr; output to stdout.
    // Warnings and errors unless RUST_LOG says more (`RUST_LOG=debug` shows
    // the store's connections and retries).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    match run(cli, &mut stdout, &mut stderr).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", err.to_terminal());
            ExitCode::from(err.exit_code())
        }
    }
}
