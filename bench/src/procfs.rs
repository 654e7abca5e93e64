//! What the benchmark reads about a running process or the machine from /proc: CPU time (utime+stime) and
//! resident memory of the proxy and pgbouncer, and the machine description for the report.

use std::fs;

use serde::{Deserialize, Serialize};

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after its closing ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (field 14) is index 11 and stime index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Microseconds per clock tick of /proc's CPU times.
pub fn micros_per_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident set size (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// 1-minute load average: how busy the shared machine was around the run.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The machine the run happened on, for the report header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub cpu_mhz: String,
    pub mem_total: String,
    pub kernel: String,
    pub postgres: String,
    pub pgbench: String,
    pub pgbouncer: String,
}

impl Machine {
    pub fn describe(pg_bin_dir: &std::path::Path) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_else(|| "unknown".into())
        };
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let version = |program: &std::path::Path| {
            std::process::Command::new(program)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into())
        };
        Machine {
            cpu_model: field("model name"),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_mhz: field("cpu MHz"),
            mem_total,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            postgres: version(&pg_bin_dir.join("postgres")),
            pgbench: version(std::path::Path::new("pgbench")),
            pgbouncer: version(std::path::Path::new(crate::pgbouncer::PGBOUNCER_BIN)),
        }
    }
}

/// Raises the open-files soft limit to the hard limit: 1,000 idle clients need 1,000 sockets here and
/// 2,000 in the proxy (which inherits the limit).
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Raises this process's scheduling priority (children inherit it: pgbouncer, the proxy, pgbench) so
/// compile jobs of other sessions on the shared machine disturb the measurement less. With autogroup
/// scheduling (Linux's default for desktops and many VMs) nice only ranks processes inside one session's
/// group, so the group's own nice is raised too. Only root may lower nice values; returns the nice in force.
pub fn raise_priority(nice: i32) -> i32 {
    raise_autogroup_of(std::process::id(), nice);
    // SAFETY: setpriority/getpriority have no memory-safety preconditions.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

/// Asks the scheduler for a short time slice (EEVDF custom slice, Linux 6.12+; inherited by children):
/// it does not take more CPU, but a benchmark process that wakes up gets an earlier deadline and so runs
/// sooner after a compile job of another session, which is what a request/response chain needs.
/// Returns the slice in force in microseconds, or `None` when the kernel does not support it.
pub fn request_short_slice(nice: i32, slice_us: u64) -> Option<u64> {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice_us * 1000,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: sched_setattr reads `attr`, which lives across the call and has the VER0 layout it announces.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        return None;
    }
    let sched = fs::read_to_string(format!("/proc/{}/sched", std::process::id())).ok()?;
    let slice_ns: f64 =
        sched.lines().find(|l| l.trim_start().starts_with("se.slice"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((slice_ns / 1000.0) as u64)
}

/// Sets the autogroup nice of `pid`'s session: the postmaster runs in its own session (pg_ctl detaches it
/// with setsid), so it needs this as well as the benchmark's own session.
pub fn raise_autogroup_of(pid: u32, nice: i32) {
    let _ = fs::write(format!("/proc/{pid}/autogroup"), nice.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_rss() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(rss_kib(pid).unwrap() > 0);
    }
}
