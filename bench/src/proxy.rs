//! Instances of the `dualwrite` binary under test (one per proxy arm: no rules, a migration elsewhere,
//! dual-writing pgbench_accounts), their readiness probe and their Prometheus metrics.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub struct ProxyInstance {
    child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log_path: PathBuf,
}

impl ProxyInstance {
    /// Starts `dualwrite serve` and waits until it accepts TCP connections. A failure (binary missing, an
    /// option it does not know yet, an exit) is returned with the proxy's own words, for the report.
    /// `watch`: whether the change-data-capture watch runs (`--cdc`); `pool_size`: transaction pooling with
    /// that many server connections (`--pool-mode transaction`), else session mode; `session_threads`:
    /// `--session-threads` (default one per CPU).
    pub fn start(
        binary: &Path,
        upstream_url: &str,
        rules: Option<&Path>,
        watch: bool,
        pool_size: Option<u32>,
        session_threads: Option<u32>,
        log_path: PathBuf,
    ) -> Result<ProxyInstance> {
        if !binary.is_file() {
            bail!("proxy binary {} not found", binary.display());
        }
        let port = dualwrite_proxy::pgcluster::free_port()?;
        let metrics_port = dualwrite_proxy::pgcluster::free_port()?;
        let log = fs::File::create(&log_path).context("proxy log file")?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", upstream_url])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
        if let Some(rules) = rules {
            command.arg("--rules").arg(rules);
            command.args(["--cdc", if watch { "true" } else { "false" }]);
        }
        if let Some(size) = pool_size {
            command.args(["--pool-mode", "transaction", "--pool-size", &size.to_string()]);
        }
        if let Some(threads) = session_threads {
            command.args(["--session-threads", &threads.to_string()]);
        }
        command.env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let mut proxy = ProxyInstance { child, port, metrics_port, log_path };
        proxy.wait_listening()?;
        Ok(proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_listening(&mut self) -> Result<()> {
        match wait_for_port(&mut self.child, self.port, Duration::from_secs(20))? {
            Listening::Yes => Ok(()),
            Listening::Exited(status) => {
                let said = self.log_tail(8);
                if said.is_empty() {
                    bail!("`dualwrite serve` exited at once ({status}) without a word: no proxy in this build yet");
                }
                bail!("`dualwrite serve` exited ({status}): {said}")
            }
            Listening::TimedOut => bail!("dualwrite did not listen within 20 s: {}", self.log_tail(8)),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }

    /// The Prometheus text at /metrics.
    pub fn scrape(&self) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (_, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP body from /metrics"))?;
        Ok(body.to_owned())
    }
}

impl Drop for ProxyInstance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How waiting for a child process to listen ended.
pub enum Listening {
    Yes,
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Polls until `port` on 127.0.0.1 accepts a connection, the child exits, or `within` has passed.
pub fn wait_for_port(child: &mut Child, port: u16, within: Duration) -> Result<Listening> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Listening::Exited(status));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Listening::Yes);
        }
        if Instant::now() > deadline {
            return Ok(Listening::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sum of a metric over all its label sets; `None` when the exposition does not have it.
pub fn metric_sum(exposition: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `foo_total` must not match `foo_total_bar`.
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(value) = value {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_labels_and_ignores_longer_names() {
        let text = "# TYPE q counter\nq_total{route=\"passthrough\"} 5\nq_total{route=\"rewritten\"} 2\nq_total_other 9\nq 1\n";
        assert_eq!(metric_sum(text, "q_total"), Some(7.0));
        assert_eq!(metric_sum(text, "q"), Some(1.0));
        assert_eq!(metric_sum(text, "missing"), None);
    }
}
