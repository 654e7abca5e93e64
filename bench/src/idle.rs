//! Memory per idle client: open N client connections that complete startup (tokio-postgres) and leave them
//! idle, then read the proxy's (or pgbouncer's) resident set size.

use std::time::Duration;

use anyhow::Result;
use futures::{stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use crate::procfs;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleRecord {
    pub target: String,
    /// (idle clients, RSS in KiB)
    pub points: Vec<(usize, u64)>,
    pub error: Option<String>,
}

impl IdleRecord {
    /// KiB per idle client between the smallest and the largest count measured beyond zero.
    pub fn kib_per_client(&self) -> Option<f64> {
        let nonzero: Vec<&(usize, u64)> = self.points.iter().filter(|(n, _)| *n > 0).collect();
        let (n0, r0) = nonzero.first()?;
        let (n1, r1) = nonzero.last()?;
        (n1 > n0).then(|| (*r1 as f64 - *r0 as f64) / (*n1 - *n0) as f64)
    }
}

/// RSS of `pid` with 0 and then each of `counts` idle clients connected to `port`.
pub fn measure(rt: &Runtime, target: &str, port: u16, pid: u32, counts: &[usize]) -> IdleRecord {
    let mut record = IdleRecord { target: target.to_owned(), points: Vec::new(), error: None };
    let result: Result<()> = rt.block_on(async {
        let settle = Duration::from_millis(1500);
        tokio::time::sleep(settle).await;
        record.points.push((0, procfs::rss_kib(pid).unwrap_or(0)));
        let mut clients = Vec::new();
        for &count in counts {
            let missing = count.saturating_sub(clients.len());
            let opened: Vec<_> = stream::iter(0..missing)
                .map(|_| crate::db::connect(port, crate::db::DATABASE))
                .buffer_unordered(32)
                .try_collect()
                .await?;
            clients.extend(opened);
            tokio::time::sleep(settle).await;
            record.points.push((count, procfs::rss_kib(pid).unwrap_or(0)));
        }
        drop(clients);
        // Give the server time to reap 1,000 backends before the next measurement.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    });
    if let Err(err) = result {
        record.error = Some(format!("{err:#}"));
    }
    record
}
