//! The bulk dual write: one UPDATE of every row of pgbench_accounts (1,000,000 at scale 10), dual-written
//! by the proxy's rewrite against the trigger, with the hand-written CTE and a plain UPDATE as references.
//! Each run starts from a vacuumed table; after each dual write the shadow is checked to agree.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use crate::db::{self, Sql};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkArm {
    /// `UPDATE pgbench_accounts SET abalance = abalance + 1` sent through the dual-writing proxy.
    Proxy,
    /// The same UPDATE sent directly with the trigger enabled.
    Trigger,
    /// Reference: the CTE form sent directly by hand.
    CteByHand,
    /// Reference: the UPDATE alone, no dual write (the floor).
    PlainUpdate,
}

impl BulkArm {
    pub const ALL: [BulkArm; 4] = [BulkArm::Proxy, BulkArm::Trigger, BulkArm::CteByHand, BulkArm::PlainUpdate];

    pub fn label(self) -> &'static str {
        match self {
            BulkArm::Proxy => "dualwrite proxy (UPDATE rewritten to the CTE)",
            BulkArm::Trigger => "PL/pgSQL trigger, direct",
            BulkArm::CteByHand => "reference: the CTE written by hand, direct",
            BulkArm::PlainUpdate => "reference: plain UPDATE, no dual write",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkRecord {
    pub arm: BulkArm,
    pub rows: i64,
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

/// Runs one bulk UPDATE. `proxy_port` is the dual-writing proxy (needed for [`BulkArm::Proxy`]).
pub fn run_once(rt: &Runtime, admin: &Sql, arm: BulkArm, proxy_port: Option<u16>) -> BulkRecord {
    let mut record = BulkRecord { arm, rows: 0, seconds: None, error: None };
    match run_inner(rt, admin, arm, proxy_port) {
        Ok((rows, seconds)) => {
            record.rows = rows;
            record.seconds = Some(seconds);
        }
        Err(err) => record.error = Some(format!("{err:#}")),
    }
    record
}

fn run_inner(rt: &Runtime, admin: &Sql, arm: BulkArm, proxy_port: Option<u16>) -> Result<(i64, f64)> {
    // Earlier arms that do not dual-write may have left the shadow behind: resync it, untimed.
    admin.batch(
        rt,
        "UPDATE pgbench_accounts_v2 s SET balance = a.abalance FROM pgbench_accounts a \
         WHERE a.aid = s.aid AND s.balance <> a.abalance",
    )?;
    // One statement per call: VACUUM refuses the implicit transaction of a multi-statement string.
    admin.batch(rt, "VACUUM pgbench_accounts, pgbench_accounts_v2")?;
    admin.batch(rt, "CHECKPOINT")?;
    db::set_trigger(admin, rt, arm == BulkArm::Trigger)?;
    let rows = admin.scalar_i64(rt, "SELECT count(*) FROM pgbench_accounts")?;
    // The plain reference must leave the shadow as it is, so it adds 0 (same work for the UPDATE).
    let set = if arm == BulkArm::PlainUpdate { "abalance = abalance + 0" } else { "abalance = abalance + 1" };
    let update = format!("UPDATE pgbench_accounts SET {set}");
    let started = Instant::now();
    let result = match arm {
        BulkArm::Proxy => {
            let Some(port) = proxy_port else {
                bail!("not available in this build (the dual-writing proxy did not start)");
            };
            let client = Sql::connect(rt, port, db::DATABASE)?;
            client.batch(rt, &update)
        }
        BulkArm::Trigger | BulkArm::PlainUpdate => admin.batch(rt, &update),
        BulkArm::CteByHand => admin.batch(rt, &db::cte_update(set, "")),
    };
    let seconds = started.elapsed().as_secs_f64();
    db::set_trigger(admin, rt, false)?;
    result?;
    let diverged = admin.scalar_i64(
        rt,
        "SELECT count(*) FROM pgbench_accounts a JOIN pgbench_accounts_v2 s USING (aid) WHERE s.balance <> a.abalance",
    )?;
    if diverged > 0 {
        bail!("{diverged} shadow rows disagree after the bulk UPDATE: the dual write did not happen (took {seconds:.1} s)");
    }
    Ok((rows, seconds))
}
