//! The `dualwrite` binary: parses the command line, sets up logging (RUST_LOG, default `info`; colours only
//! when stderr is a terminal and NO_COLOR is unset) and runs the chosen command. `serve` stops gracefully on SIGTERM/SIGINT and exits 0, and reloads its config on SIGHUP.

use std::io::IsTerminal;

use clap::Parser;
use dualwrite_proxy::cli::{Cli, Command};
use dualwrite_proxy::{reload, shutdown, Server};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Escape codes in a log file or journal are noise that breaks grep.
        .with_ansi(colour_logs())
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dualwrite: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dualwrite: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Colours only for a person at a terminal: the https://no-color.org convention turns them off there too.
fn colour_logs() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            // Handlers first: once the proxy says it is listening, a supervisor (or a test) may signal it,
            // and a signal without a handler ends the process.
            let (hangups, stop) = (reload::hangups(), shutdown::signal());
            let server = Server::bind(config).await?;
            let reloads = tokio::spawn(reload::on_sighup(hangups, server.reloader(), move || args.load()));
            server.run(stop).await?;
            reloads.abort();
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Quickstart(args) => {
            dualwrite_proxy::quickstart::main(args.load()?).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Backfill(args) => Ok(dualwrite_proxy::jobs::cli::backfill(args).await),
        Command::Verify(args) => Ok(dualwrite_proxy::jobs::cli::verify(args).await),
        Command::Check(args) => Ok(dualwrite_proxy::check::main(args).await),
        Command::Plan(args) => Ok(dualwrite_proxy::planner::plan_main(args).await),
        Command::Apply(args) => Ok(dualwrite_proxy::planner::apply::apply_main(args).await),
    }
}
