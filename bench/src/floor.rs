//! The reference relays of the `floor-*` arms: `floor-relay` (bench/src/bin/floor-relay.rs) processes, one
//! per engine, in front of the benchmark's Postgres. They measure what a one-hop relay costs on this
//! machine before any protocol work, with tokio's runtime and with a readiness loop of one's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::arms::FloorEngine;
use crate::proxy::{wait_for_port, Listening};

pub struct FloorRelay {
    child: Child,
    pub port: u16,
}

impl FloorRelay {
    pub fn start(binary: &Path, engine: FloorEngine, pg_port: u16) -> Result<FloorRelay> {
        if !binary.is_file() {
            bail!("{} not found (bench/run builds it)", binary.display());
        }
        let port = dualwrite_proxy::pgcluster::free_port()?;
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &format!("127.0.0.1:{pg_port}")])
            .args(engine.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut relay = FloorRelay { child, port };
        match wait_for_port(&mut relay.child, port, Duration::from_secs(10))? {
            Listening::Yes => Ok(relay),
            Listening::Exited(status) => bail!("floor-relay exited ({status})"),
            Listening::TimedOut => bail!("floor-relay did not listen within 10 s"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `floor-relay` is built next to the benchmark's own binary.
pub fn binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("floor-relay")))
        .unwrap_or_else(|| PathBuf::from("floor-relay"))
}
