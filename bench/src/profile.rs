//! `--profile`: where the proxy's passthrough hot path spends its time, on select-only at 1 client.
//!
//! - perf (software cpu-clock sampling; this VM has no hardware counters) attached to a proxy with no rules
//!   while pgbench runs -M simple and -M prepared, with DWARF call graphs;
//! - callgrind: the proxy under valgrind, counters zeroed after a warm-up run, then a fixed number of
//!   transactions, so instructions per relayed statement are exact (total Ir / statements).
//!
//! Raw reports go to `<out>/profile/`; the analysis drawn from them is written by hand into PROFILE.md.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::db::{self, Sql, DATABASE, USER};
use crate::proxy::ProxyInstance;

const PERF_SECONDS: u32 = 10;
const CALLGRIND_TRANSACTIONS: u32 = 20_000;

pub fn run(proxy_bin: &Path, out: &Path, work_dir: &Path) -> Result<()> {
    let dir = out.join("profile");
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let cluster = db::start_cluster("256MB", work_dir)?;
    if let Some(postmaster) = cluster.pid() {
        crate::procfs::raise_autogroup_of(postmaster, -10);
    }
    db::load(&rt, &cluster, 1)?;
    let upstream = format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", cluster.port());
    let work = tempfile::Builder::new().prefix("dualwrite-profile-").tempdir_in(work_dir)?;

    // perf, attached to a normally running proxy; then strace counting its system calls.
    let proxy =
        ProxyInstance::start(proxy_bin, &upstream, None, false, None, None, work.path().join("proxy-perf.log"))?;
    for mode in ["simple", "prepared"] {
        let data = work.path().join(format!("perf-{mode}.data"));
        let mut perf = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "1999", "--call-graph", "dwarf,16384", "-p"])
            .arg(proxy.pid().to_string())
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep", &(PERF_SECONDS + 1).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf record (apt-get install linux-perf)")?;
        std::thread::sleep(Duration::from_millis(500));
        let transactions = pgbench(proxy.port, mode, &["-T", &PERF_SECONDS.to_string()])?;
        perf.wait()?;
        let reports: [(&str, &[&str]); 2] = [
            ("self", &["--no-children", "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.4"]),
            ("inclusive", &["--children", "--no-inline", "--sort", "dso,sym", "-g", "none", "--percent-limit", "1.5"]),
        ];
        for (name, args) in reports {
            let report = Command::new("perf").arg("report").args(["--stdio", "-i"]).arg(&data).args(args).output()?;
            let text = format!(
                "# perf cpu-clock samples of the proxy (all threads), select-only -M {mode} -c 1, {PERF_SECONDS} s, {transactions} transactions\n{}",
                String::from_utf8_lossy(&report.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with("# ."))
                    .map(|l| l.trim_end())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::fs::write(dir.join(format!("perf-{mode}-{name}.txt")), text)?;
        }
        let _ = std::fs::remove_file(&data);

        let strace_out = work.path().join(format!("strace-{mode}.txt"));
        let mut strace = Command::new("strace")
            .args(["-f", "-c", "-o"])
            .arg(&strace_out)
            .arg("-p")
            .arg(proxy.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("strace")?;
        std::thread::sleep(Duration::from_millis(500));
        let transactions = pgbench(proxy.port, mode, &["-t", "5000"])?;
        // SAFETY: signalling the strace child we started; it detaches and writes its summary.
        unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
        strace.wait()?;
        let summary = std::fs::read_to_string(&strace_out).unwrap_or_default();
        std::fs::write(
            dir.join(format!("strace-{mode}.txt")),
            format!("# system calls of the proxy (all threads) over {transactions} transactions of select-only -M {mode} -c 1 (strace -f -c)\n{summary}"),
        )?;
    }
    drop(proxy);

    // callgrind: exact instructions per statement.
    for mode in ["simple", "prepared"] {
        let port = dualwrite_proxy::pgcluster::free_port()?;
        let out_file = work.path().join(format!("callgrind-{mode}.out"));
        let mut valgrind = Command::new("valgrind")
            .args(["--tool=callgrind", "--dump-instr=no", "--collect-jumps=no"])
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(proxy_bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--upstream", &upstream])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join(format!("valgrind-{mode}.log")))?)
            .spawn()
            .context("valgrind")?;
        wait_port(port, Duration::from_secs(60))?;
        Sql::connect(&rt, port, DATABASE)?.scalar_i64(&rt, "SELECT 1::bigint")?;
        pgbench(port, mode, &["-t", "500"])?;
        let zero = Command::new("callgrind_control").arg("-z").arg(valgrind.id().to_string()).output()?;
        if !zero.status.success() {
            bail!("callgrind_control -z failed: {}", String::from_utf8_lossy(&zero.stderr));
        }
        let transactions = pgbench(port, mode, &["-t", &CALLGRIND_TRANSACTIONS.to_string()])?;
        // SIGTERM: the proxy shuts down gracefully and valgrind writes the profile.
        // SAFETY: signalling the valgrind child we started.
        unsafe { libc::kill(valgrind.id() as i32, libc::SIGTERM) };
        valgrind.wait()?;
        let annotate =
            Command::new("callgrind_annotate").args(["--threshold=100", "--inclusive=no"]).arg(&out_file).output()?;
        let inclusive =
            Command::new("callgrind_annotate").args(["--threshold=100", "--inclusive=yes"]).arg(&out_file).output()?;
        let text = String::from_utf8_lossy(&annotate.stdout);
        let total = total_ir(&text);
        let header = format!(
            "# callgrind of the proxy, select-only -M {mode} -c 1, {transactions} transactions (counters zeroed after a 500-transaction warm-up)\n\
             # total Ir {} => {:.0} instructions per relayed statement (incl. the reconnect of pgbench and shutdown)\n",
            total.map(|t| t.to_string()).unwrap_or_default(),
            total.map(|t| t as f64 / transactions.max(1) as f64).unwrap_or(f64::NAN)
        );
        std::fs::write(
            dir.join(format!("callgrind-{mode}-self.txt")),
            format!("{header}{}", text.lines().take(70).collect::<Vec<_>>().join("\n")),
        )?;
        std::fs::write(
            dir.join(format!("callgrind-{mode}-inclusive.txt")),
            format!(
                "{header}{}",
                String::from_utf8_lossy(&inclusive.stdout).lines().take(120).collect::<Vec<_>>().join("\n")
            ),
        )?;
    }
    eprintln!("profile reports in {}", dir.display());
    drop(cluster);
    let _ = rt;
    Ok(())
}

fn total_ir(annotate: &str) -> Option<u64> {
    annotate
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
}

fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("nothing listens on {port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// pgbench select-only through `port`; returns the transactions processed.
fn pgbench(port: u16, mode: &str, limit: &[&str]) -> Result<u64> {
    let output = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-n", "-S", "-c", "1", "-M", mode])
        .args(limit)
        .arg(DATABASE)
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .output()?;
    if !output.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
        .and_then(|v| v.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_callgrind_totals() {
        let text = "--\nIr\n--\n1,234,567 (100.0%)  PROGRAM TOTALS\n";
        assert_eq!(super::total_ir(text), Some(1_234_567));
    }
}
