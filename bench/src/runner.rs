//! One full benchmark run: start everything, probe which arms this build supports, run the bulk dual write,
//! the pgbench matrix (arms alternating within each repetition) and the idle-client memory test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::runtime::Runtime;

use crate::arms::{Arm, Endpoint, FloorEngine, ProxyKind, POOL_SIZE};
use crate::bulk::{self, BulkArm};
use crate::copy::{self, CopyPlan};
use crate::db::{self, Sql, DATABASE, USER};
use crate::floor::{self, FloorRelay};
use crate::idle;
use crate::jobs;
use crate::pgbench::{self, Mode, RunSpec, Script};
use crate::pgbouncer::{Pgbouncer, PoolMode};
use crate::procfs::{self, Machine};
use crate::proxy::{metric_sum, ProxyInstance};
use crate::results::{CacheRecord, Plan, Results, RunRecord};
use crate::Args;

fn plan(args: &Args) -> Plan {
    let quick = args.quick;
    Plan {
        quick,
        scale: args.scale.unwrap_or(if quick { 2 } else { 10 }),
        // A full run measures each cell for 5 s after 2 s of warm-up, 3 repetitions (the project's bar for a
        // figure in a report); --quick is a smoke run of the same code.
        reps: args.reps.unwrap_or(if quick { 1 } else { 3 }),
        warmup_s: args.warmup.unwrap_or(if quick { 1 } else { 2 }),
        measure_s: args.duration.unwrap_or(if quick { 2 } else { 5 }),
        modes: match &args.modes[..] {
            [] => Mode::ALL.to_vec(),
            chosen => Mode::ALL.into_iter().filter(|m| chosen.iter().any(|c| c == m.arg())).collect(),
        },
        clients: match (&args.clients[..], quick) {
            ([], true) => vec![1, 4],
            ([], false) => vec![1, 4, 16],
            (chosen, _) => chosen.to_vec(),
        },
        extra_select_clients: if quick || !args.clients.is_empty() { vec![] } else { vec![8, 32] },
        bulk_reps: if quick { 1 } else { 2 },
        idle_counts: if quick { vec![10, 100] } else { vec![10, 1000] },
        shared_buffers: if quick { "256MB" } else { "1GB" }.into(),
        nice: 0,
        slice_us: None,
        arms: args.arms.clone(),
        tpcb_only: args.tpcb_only,
        select_only: args.select_only,
        copy_only: args.copy_only,
    }
}

pub fn default_proxy_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/dualwrite")
}

pub fn run(args: &Args) -> Result<Results> {
    procfs::raise_open_files_limit();
    let mut plan = plan(args);
    plan.nice = procfs::raise_priority(args.nice);
    plan.slice_us = procfs::request_short_slice(plan.nice, 100);
    let wall = Instant::now();
    let started_utc = shell("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]);
    let load_before = procfs::load_average();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let work =
        tempfile::Builder::new().prefix("dualwrite-bench-").tempdir_in(&args.work_dir).context("work directory")?;

    eprintln!("[setup] Postgres (scale {}, shared_buffers {})", plan.scale, plan.shared_buffers);
    let cluster = db::start_cluster(&plan.shared_buffers, &args.work_dir)?;
    if let Some(postmaster) = cluster.pid() {
        procfs::raise_autogroup_of(postmaster, plan.nice);
    }
    let admin = db::load(&rt, &cluster, plan.scale)?;
    let machine = Machine::describe(cluster.bin_dir());
    eprintln!("[setup] data loaded in {:.0} s; pgbouncer", wall.elapsed().as_secs_f64());
    let bouncer = Pgbouncer::start(cluster.port(), USER, &args.work_dir, PoolMode::Session)?;
    let bouncer_tx = Pgbouncer::start(cluster.port(), USER, &args.work_dir, PoolMode::Transaction)?;
    for (what, port) in [("pgbouncer", bouncer.port), ("pgbouncer (transaction mode)", bouncer_tx.port)] {
        Sql::connect(&rt, port, DATABASE)
            .and_then(|s| s.scalar_i64(&rt, "SELECT 1::bigint"))
            .with_context(|| format!("{what} does not answer"))?;
    }

    let upstream = format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", cluster.port());
    let proxy_bin = args.proxy_bin.clone().unwrap_or_else(default_proxy_bin);
    let mut proxies: HashMap<ProxyKind, ProxyInstance> = HashMap::new();
    let mut proxy_missing: HashMap<ProxyKind, String> = HashMap::new();
    for kind in ProxyKind::ALL {
        match start_proxy(&rt, &admin, &proxy_bin, &upstream, kind, work.path()) {
            Ok(proxy) => {
                proxies.insert(kind, proxy);
            }
            Err(err) => {
                eprintln!("[setup] proxy {kind:?}: not available in this build: {err:#}");
                proxy_missing.insert(kind, format!("{err:#}"));
            }
        }
    }
    let chosen = |arm: Arm| args.arms.iter().any(|a| a == arm.key());
    let mut floors: HashMap<FloorEngine, FloorRelay> = HashMap::new();
    let mut floor_missing: HashMap<FloorEngine, String> = HashMap::new();
    for engine in FloorEngine::ALL {
        if !Arm::ALL.iter().any(|&arm| chosen(arm) && arm.endpoint() == Endpoint::Floor(engine)) {
            continue;
        }
        match FloorRelay::start(&floor::binary(), engine, cluster.port()) {
            Ok(relay) => {
                floors.insert(engine, relay);
            }
            Err(err) => {
                floor_missing.insert(engine, format!("{err:#}"));
            }
        }
    }
    let availability: Vec<(Arm, Option<String>)> = Arm::ALL
        .iter()
        .map(|&arm| {
            let reason = match arm.endpoint() {
                _ if !args.arms.is_empty() && !chosen(arm) => Some("not selected for this run (--arms)".to_string()),
                _ if args.arms.is_empty() && arm.only_when_chosen() => {
                    Some("a reference arm, run only when --arms names it".to_string())
                }
                Endpoint::Proxy(kind) => proxy_missing.get(&kind).cloned(),
                Endpoint::Floor(engine) => floor_missing.get(&engine).cloned(),
                _ => None,
            };
            (arm, reason)
        })
        .collect();

    let mut results = Results {
        command: args.command.clone().unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        started_utc,
        wall_seconds: 0.0,
        load_before,
        load_after: String::new(),
        git_commit: git_commit(),
        machine,
        plan: plan.clone(),
        pg_settings: db::settings(&plan.shared_buffers),
        availability,
        runs: Vec::new(),
        bulk: Vec::new(),
        idle: Vec::new(),
        cache: Vec::new(),
        jobs: None,
        copy: None,
    };

    let copy_plan = CopyPlan {
        psql: &cluster.bin_dir().join("psql"),
        direct_port: cluster.port(),
        proxy_port: proxies.get(&ProxyKind::DualWrite).map(|p| p.port),
        relay_port: proxies.get(&ProxyKind::NoRules).map(|p| p.port),
        reps: plan.bulk_reps + 1,
        seconds: args.copy_seconds,
        batch_rows: if plan.quick { 20_000 } else { 100_000 },
        work_dir: work.path(),
    };
    if plan.copy_only {
        admin.batch(&rt, "VACUUM ANALYZE")?;
        admin.batch(&rt, "CHECKPOINT")?;
        results.copy = Some(copy::run(&rt, &admin, &copy_plan));
        results.load_after = procfs::load_average();
        results.wall_seconds = wall.elapsed().as_secs_f64();
        return Ok(results);
    }
    let matrix_only = !args.arms.is_empty();
    if !matrix_only {
        run_bulk(&rt, &admin, &proxies, &mut results)?;
    }
    admin.batch(&rt, "VACUUM ANALYZE")?;
    admin.batch(&rt, "CHECKPOINT")?;

    let cte_script = db::write_cte_script(work.path(), plan.scale)?;
    run_matrix(
        &rt,
        &admin,
        cluster.port(),
        &bouncer,
        &bouncer_tx,
        &floors,
        &mut proxies,
        &cte_script,
        work.path(),
        &mut results,
    )?;

    for (&kind, proxy) in &proxies {
        let metrics = proxy.scrape().unwrap_or_default();
        results.cache.push(CacheRecord {
            proxy: kind,
            hits: metric_sum(&metrics, "dualwrite_rewrite_cache_hits_total"),
            misses: metric_sum(&metrics, "dualwrite_rewrite_cache_misses_total"),
            queries_total: metric_sum(&metrics, "dualwrite_queries_total"),
        });
    }
    results.cache.sort_by_key(|c| c.proxy);

    if !matrix_only {
        let dual_write_port = proxies.get(&ProxyKind::DualWrite).map(|p| p.port);
        let jobs_reps = plan.bulk_reps + 1;
        results.jobs = Some(jobs::run(&rt, &admin, cluster.port(), dual_write_port, jobs_reps, work.path()));
        results.copy = Some(copy::run(&rt, &admin, &copy_plan));

        eprintln!("[idle] RSS with idle clients");
        if let Some(proxy) = proxies.get(&ProxyKind::NoRules) {
            results.idle.push(idle::measure(&rt, "dualwrite (no rules)", proxy.port, proxy.pid(), &plan.idle_counts));
        }
        results.idle.push(idle::measure(&rt, "pgbouncer", bouncer.port, bouncer.pid(), &plan.idle_counts));
    }

    results.load_after = procfs::load_average();
    results.wall_seconds = wall.elapsed().as_secs_f64();
    drop(proxies);
    drop(bouncer);
    drop(admin);
    drop(cluster);
    Ok(results)
}

/// Starts one proxy arm and checks that it does what the arm claims; an error means "not available".
fn start_proxy(
    rt: &Runtime,
    admin: &Sql,
    binary: &Path,
    upstream: &str,
    kind: ProxyKind,
    work: &Path,
) -> Result<ProxyInstance> {
    let rules = match kind {
        ProxyKind::NoRules | ProxyKind::NoRulesTx | ProxyKind::NoRulesOneThread => None,
        ProxyKind::Elsewhere => Some(("rules-elsewhere.toml", db::ELSEWHERE_RULES)),
        ProxyKind::DualWrite => Some(("rules-dualwrite.toml", db::DUAL_WRITE_RULES)),
        ProxyKind::DualWriteWatch => Some(("rules-dualwrite-watch.toml", db::DUAL_WRITE_RULES)),
    };
    let rules_path = match rules {
        Some((name, text)) => {
            let path = work.join(name);
            std::fs::write(&path, text)?;
            Some(path)
        }
        None => None,
    };
    let log = work.join(format!("proxy-{kind:?}.log"));
    let watch = kind == ProxyKind::DualWriteWatch;
    let pool_size = (kind == ProxyKind::NoRulesTx).then_some(POOL_SIZE);
    let session_threads = (kind == ProxyKind::NoRulesOneThread).then_some(1);
    let proxy = ProxyInstance::start(binary, upstream, rules_path.as_deref(), watch, pool_size, session_threads, log)?;
    let client = Sql::connect(rt, proxy.port, DATABASE).context("connecting through the proxy")?;
    client.scalar_i64(rt, "SELECT 1::bigint").context("a query through the proxy")?;
    match kind {
        ProxyKind::NoRules | ProxyKind::NoRulesOneThread => {}
        ProxyKind::NoRulesTx => {
            // Every client authenticates on a server connection of its own (closing an idle one when the
            // pool is full), so pids do not show the pooling; the pool's own gauge does: with more clients
            // than the pool's size connected, it holds at most its size.
            let mut clients = Vec::new();
            for _ in 0..=POOL_SIZE {
                let c = Sql::connect(rt, proxy.port, DATABASE).context("connecting through the pooling proxy")?;
                c.scalar_i64(rt, "SELECT 1::bigint")?;
                clients.push(c);
            }
            let metrics = proxy.scrape().context("the pooling proxy's /metrics")?;
            let held = metric_sum(&metrics, "dualwrite_pool_server_connections").unwrap_or(f64::NAN);
            anyhow::ensure!(
                held <= f64::from(POOL_SIZE),
                "the proxy starts with --pool-mode transaction but does not pool ({} clients, {held} server connections)",
                POOL_SIZE + 1
            );
        }
        ProxyKind::Elsewhere => {
            let sql = "INSERT INTO bench_untouched (id, name, email) VALUES (1, 'Ada Lovelace', 'ADA@EXAMPLE.ORG')";
            let sent = client.batch(rt, sql);
            let landed =
                admin.scalar_i64(rt, "SELECT count(*) FROM bench_untouched_v2 WHERE id = 1 AND first_name = 'Ada'")?;
            admin.batch(rt, "DELETE FROM bench_untouched; DELETE FROM bench_untouched_v2")?;
            sent.context("INSERT into the migrated table through the proxy")?;
            anyhow::ensure!(
                landed == 1,
                "the proxy starts with --rules but does not dual-write yet (an INSERT into bench_untouched did not reach bench_untouched_v2)"
            );
        }
        ProxyKind::DualWrite | ProxyKind::DualWriteWatch => {
            admin.batch(rt, "UPDATE pgbench_accounts_v2 SET balance = -999999 WHERE aid = 1")?;
            let sent = client.batch(rt, "UPDATE pgbench_accounts SET abalance = abalance + 0 WHERE aid = 1");
            let landed = admin.scalar_i64(
                rt,
                "SELECT count(*) FROM pgbench_accounts a JOIN pgbench_accounts_v2 s USING (aid) \
                 WHERE aid = 1 AND s.balance = a.abalance",
            )?;
            admin.batch(
                rt,
                "UPDATE pgbench_accounts_v2 s SET balance = a.abalance FROM pgbench_accounts a WHERE a.aid = 1 AND s.aid = 1",
            )?;
            sent.context("UPDATE of pgbench_accounts through the proxy")?;
            anyhow::ensure!(
                landed == 1,
                "the proxy starts with --rules but does not dual-write yet (an UPDATE of pgbench_accounts did not reach pgbench_accounts_v2)"
            );
        }
    }
    if watch {
        // It streams once armed; then paused until its own runs.
        db::set_watch(admin, rt, true).context("the change-data-capture watch (needs wal_level = logical)")?;
        db::set_watch(admin, rt, false)?;
    }
    Ok(proxy)
}

fn run_bulk(
    rt: &Runtime,
    admin: &Sql,
    proxies: &HashMap<ProxyKind, ProxyInstance>,
    results: &mut Results,
) -> Result<()> {
    let proxy_port = proxies.get(&ProxyKind::DualWrite).map(|p| p.port);
    for rep in 0..results.plan.bulk_reps {
        let mut order = BulkArm::ALL.to_vec();
        let len = order.len();
        order.rotate_left(rep as usize % len);
        for arm in order {
            // The references (hand-written CTE, plain UPDATE) run once; the contenders every repetition.
            let contender = matches!(arm, BulkArm::Proxy | BulkArm::Trigger);
            if rep > 0 && (!contender || (arm == BulkArm::Proxy && proxy_port.is_none())) {
                continue;
            }
            eprintln!("[bulk] rep {} {}", rep + 1, arm.label());
            let record = bulk::run_once(rt, admin, arm, proxy_port);
            match (&record.seconds, &record.error) {
                (Some(s), _) => eprintln!("[bulk]   {} rows in {s:.2} s", record.rows),
                (_, Some(e)) => eprintln!("[bulk]   {e}"),
                _ => {}
            }
            results.bulk.push(record);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_matrix(
    rt: &Runtime,
    admin: &Sql,
    pg_port: u16,
    bouncer: &Pgbouncer,
    bouncer_tx: &Pgbouncer,
    floors: &HashMap<FloorEngine, FloorRelay>,
    proxies: &mut HashMap<ProxyKind, ProxyInstance>,
    cte_script: &Path,
    work: &Path,
    results: &mut Results,
) -> Result<()> {
    let plan = results.plan.clone();
    let mut available: Vec<Arm> =
        results.availability.iter().filter(|(_, reason)| reason.is_none()).map(|(arm, _)| *arm).collect();
    let mut per_rep = 0;
    for workload in plan.workloads() {
        for &mode in &plan.modes {
            for clients in plan.clients_for(workload, mode) {
                per_rep += available.iter().filter(|&&a| plan.arm_runs_at(a, workload, mode, clients)).count();
            }
        }
    }
    let total = per_rep * plan.reps as usize;
    let per_run = f64::from(plan.warmup_s + plan.measure_s) + 0.5;
    eprintln!("[pgbench] {total} runs, about {:.0} min", total as f64 * per_run / 60.0);
    let log_dir = work.join("pgbench-log");
    let mut trigger_on = false;
    let mut done = 0;
    for rep in 0..plan.reps {
        for workload in plan.workloads() {
            for &mode in &plan.modes {
                for clients in plan.clients_for(workload, mode) {
                    let mut arms: Vec<Arm> =
                        available.iter().copied().filter(|&a| plan.arm_runs_at(a, workload, mode, clients)).collect();
                    // Alternate which arm goes first, so slow drifts of the machine do not favour one arm.
                    let len = arms.len().max(1);
                    arms.rotate_left(rep as usize % len);
                    for arm in arms {
                        if arm.needs_trigger() != trigger_on {
                            db::set_trigger(admin, rt, arm.needs_trigger())?;
                            trigger_on = arm.needs_trigger();
                        }
                        let (port, hop_pid) = match arm.endpoint() {
                            Endpoint::Postgres => (pg_port, None),
                            Endpoint::Pgbouncer => (bouncer.port, Some(bouncer.pid())),
                            Endpoint::PgbouncerTx => (bouncer_tx.port, Some(bouncer_tx.pid())),
                            Endpoint::Proxy(kind) => {
                                let proxy = proxies.get(&kind).expect("available arms have a proxy");
                                (proxy.port, Some(proxy.pid()))
                            }
                            Endpoint::Floor(engine) => {
                                let relay = floors.get(&engine).expect("available arms have a relay");
                                (relay.port, Some(relay.pid()))
                            }
                        };
                        let script = match arm {
                            Arm::CteDirect => Script::File(cte_script.to_owned()),
                            _ => Script::Builtin(workload),
                        };
                        let spec = RunSpec {
                            port,
                            user: USER,
                            database: DATABASE,
                            script,
                            mode,
                            clients,
                            warmup_s: plan.warmup_s,
                            measure_s: plan.measure_s,
                            log_dir: &log_dir,
                        };
                        let watch = arm == Arm::DwDualWriteWatch;
                        let walsender = if watch {
                            db::set_watch(admin, rt, true)?;
                            db::watch_walsender(admin, rt)?
                        } else {
                            None
                        };
                        let cache_before = cache_counters(proxies, arm);
                        let ticks_before = hop_pid.and_then(procfs::cpu_ticks);
                        let walsender_before = walsender.and_then(procfs::cpu_ticks);
                        let outcome = pgbench::run(&spec);
                        let ticks_after = hop_pid.and_then(procfs::cpu_ticks);
                        let walsender_after = walsender.and_then(procfs::cpu_ticks);
                        let cache_after = cache_counters(proxies, arm);
                        if watch {
                            db::set_watch(admin, rt, false)?;
                        }
                        done += 1;
                        let mut record = RunRecord {
                            arm,
                            workload,
                            mode,
                            clients,
                            rep,
                            outcome: None,
                            error: None,
                            hop_cpu_us_per_statement: None,
                            cache_hits: None,
                            cache_misses: None,
                            walsender_cpu_us_per_transaction: None,
                        };
                        if let (Some((h0, m0)), Some((h1, m1))) = (cache_before, cache_after) {
                            record.cache_hits = Some(h1 - h0);
                            record.cache_misses = Some(m1 - m0);
                        }
                        match outcome {
                            Ok(outcome) => {
                                let statements = outcome.transactions_total * workload.statements_per_transaction();
                                if let (Some(before), Some(after)) = (walsender_before, walsender_after) {
                                    if outcome.transactions_total > 0 {
                                        record.walsender_cpu_us_per_transaction = Some(
                                            (after - before) as f64 * procfs::micros_per_tick()
                                                / outcome.transactions_total as f64,
                                        );
                                    }
                                }
                                if let (Some(before), Some(after)) = (ticks_before, ticks_after) {
                                    if statements > 0 {
                                        record.hop_cpu_us_per_statement = Some(
                                            (after - before) as f64 * procfs::micros_per_tick() / statements as f64,
                                        );
                                    }
                                }
                                eprintln!(
                                    "[{done}/{total}] {} -M {} -c {clients} {}: {:.0} tps, p50 {:.0} µs, p99 {:.0} µs{}",
                                    workload.label(),
                                    mode.arg(),
                                    arm.key(),
                                    outcome.tps,
                                    outcome.p50_us,
                                    outcome.p99_us,
                                    record
                                        .hop_cpu_us_per_statement
                                        .map(|c| format!(", hop CPU {c:.1} µs/stmt"))
                                        .unwrap_or_default()
                                );
                                record.outcome = Some(outcome);
                            }
                            Err(err) => {
                                eprintln!(
                                    "[{done}/{total}] {} -M {} -c {clients} {}: FAILED {err:#}",
                                    workload.label(),
                                    mode.arg(),
                                    arm.key()
                                );
                                record.error = Some(format!("{err:#}"));
                            }
                        }
                        results.runs.push(record);
                        if let Endpoint::Proxy(kind) = arm.endpoint() {
                            let proxy = proxies.get_mut(&kind).expect("available arms have a proxy");
                            if !proxy.alive() {
                                let reason = format!("the proxy exited during the run: {}", proxy.log_tail(5));
                                eprintln!("[pgbench] {}: {reason}", arm.key());
                                for (a, r) in results.availability.iter_mut() {
                                    if a.endpoint() == Endpoint::Proxy(kind) {
                                        *r = Some(reason.clone());
                                    }
                                }
                                available.retain(|a| a.endpoint() != Endpoint::Proxy(kind));
                            }
                        }
                    }
                }
            }
        }
    }
    db::set_trigger(admin, rt, false)?;
    Ok(())
}

/// (hits, misses) of the rewrite cache of the arm's proxy, when it is a proxy arm that exports them.
fn cache_counters(proxies: &HashMap<ProxyKind, ProxyInstance>, arm: Arm) -> Option<(f64, f64)> {
    let Endpoint::Proxy(kind) = arm.endpoint() else {
        return None;
    };
    let metrics = proxies.get(&kind)?.scrape().ok()?;
    Some((
        metric_sum(&metrics, "dualwrite_rewrite_cache_hits_total")?,
        metric_sum(&metrics, "dualwrite_rewrite_cache_misses_total")?,
    ))
}

fn shell(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let rev = shell("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = !shell("git", &["-C", dir, "status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty {
        format!("{rev} (with uncommitted changes)")
    } else {
        rev
    }
}
