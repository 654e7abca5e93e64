//! The `dualwrite` binary: parses the command line, sets up logging (RUST_LOG, default `info`) and runs
//! the chosen command. `serve` stops gracefully on SIGTERM/SIGINT and exits 0, and reloads its config on SIGHUP.

use clap::Parser;
use dualwrite_proxy::cli::{Cli, Command};
use dualwrite_proxy::{reload, shutdown, Server};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
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

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            let server = Server::bind(config).await?;
            let reloads = tokio::spawn(reload::on_sighup(server.reloader(), move || args.load()));
            server.run(shutdown::signal()).await?;
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
    }
}
