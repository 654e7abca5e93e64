//! A slot that was lost: the watch's logical slot lives on one server and PostgreSQL 15 does not copy it to
//! standbys, so after a failover the new primary has no slot (the same holds for a slot dropped by hand).
//! The leader then creates a new one, which starts at the new primary's current WAL position: what was
//! committed between the old slot's confirmed position and then was never streamed, and a bypass made in
//! that interval can only be found by a verify. This module notices it (the watch's row, replicated with
//! the database, says a slot was being streamed; the slot is not there), and the leader says so until
//! it is covered: a WARN, `dualwrite_cdc_slot_lost_total`, and the interval in the watch's STATUS detail
//! until a verify of every watched migration has started after the new slot was created.

use metrics::counter;
use tokio_postgres::Client;

use super::bypass::WatchedMigration;

/// The start of the detail that marks a gap (kept across leaders: the row carries it).
const MARK: &str = "replication slot lost";

/// An interval the watch did not see: timestamps (timestamptz text) and WAL positions of its ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// About when the oldest change not streamed was committed, and the old slot's confirmed position.
    since: String,
    from: String,
    /// When the new slot was created (verifies started after it cover the gap), at which position.
    until: String,
    to: String,
}

impl Gap {
    /// What STATUS shows (the watch's `detail`); [`carried_over`] reads it back.
    pub fn detail(&self) -> String {
        let Gap { since, from, until, to } = self;
        format!(
            "{MARK} (a failover, or dropped) and recreated at [{until}]: changes committed from about [{since}] \
             (WAL [{from}] on the old slot) to then (WAL [{to}]) were not watched; bypasses in that interval are \
             found only by DUALWRITE VERIFY of each watched migration"
        )
    }
}

/// Before the leader creates `slot`: whether the watch streamed it until it vanished (a new gap), or a
/// previous leader recorded a gap not yet covered (carried over, also through an error it then met). A
/// slot lost again before the first gap was covered widens that gap to now.
pub async fn detect(client: &Client, slot: &str) -> Result<Option<Gap>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT w.detail, w.state = 'watching' AND w.slot = $1 \
                    AND NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
                    now()::text, (w.updated_at - make_interval(secs => coalesce(w.lag_seconds, 0)))::text, \
                    coalesce(w.confirmed_lsn::text, 'unknown'), pg_current_wal_lsn()::text \
             FROM dualwrite.cdc_watch w WHERE w.id = 1 AND w.state IN ('watching', 'error')",
            &[&slot],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let recorded = row.get::<_, Option<String>>(0).as_deref().and_then(carried_over);
    if !row.get::<_, bool>(1) {
        return Ok(recorded);
    }
    let (until, to) = (row.get(2), row.get(5));
    let gap = match recorded {
        Some(earlier) => Gap { until, to, ..earlier },
        None => Gap { since: row.get(3), from: row.get(4), until, to },
    };
    tracing::warn!(%slot, "{}", gap.detail());
    counter!("dualwrite_cdc_slot_lost_total").increment(1);
    Ok(Some(gap))
}

/// Whether a verify of every one of `migrations` has started since the gap (and finished).
pub async fn covered(
    client: &Client,
    gap: &Gap,
    migrations: &[WatchedMigration],
) -> Result<bool, tokio_postgres::Error> {
    let names: Vec<&str> = migrations.iter().map(|m| m.name.as_str()).collect();
    let row = client
        .query_one(
            "SELECT count(DISTINCT migration) = cardinality($1::text[]) FROM dualwrite.verify_runs \
             WHERE migration = ANY($1::text[]) AND started_at > $2::text::timestamptz AND finished_at IS NOT NULL",
            &[&names, &gap.until],
        )
        .await?;
    Ok(row.get(0))
}

/// The detail of an error row: the error, and the gap if there is one (the next leader carries it over).
pub fn with_error(gap: Option<&Gap>, error: &str) -> String {
    match gap {
        Some(gap) => format!("{error}; {}", gap.detail()),
        None => error.to_owned(),
    }
}

/// A gap a previous leader recorded in the row's detail (after an error's text, in an error row): the
/// bracketed fields of [`Gap::detail`], in order.
fn carried_over(detail: &str) -> Option<Gap> {
    let mut rest = &detail[detail.find(MARK)?..];
    let mut field = || {
        let (_, after) = rest.split_once('[')?;
        let (value, tail) = after.split_once(']')?;
        rest = tail;
        Some(value.to_owned())
    };
    let (until, since, from, to) = (field()?, field()?, field()?, field()?);
    Some(Gap { since, from, until, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap() -> Gap {
        Gap {
            since: "2026-01-01 10:00:00+00".into(),
            from: "0/3000000".into(),
            until: "2026-01-01 10:00:09.5+00".into(),
            to: "0/5000000".into(),
        }
    }

    #[test]
    fn a_recorded_gap_is_carried_over_by_the_next_leader() {
        let detail = gap().detail();
        assert_eq!(
            detail,
            "replication slot lost (a failover, or dropped) and recreated at [2026-01-01 10:00:09.5+00]: changes \
             committed from about [2026-01-01 10:00:00+00] (WAL [0/3000000] on the old slot) to then (WAL \
             [0/5000000]) were not watched; bypasses in that interval are found only by DUALWRITE VERIFY of each \
             watched migration"
        );
        assert_eq!(carried_over(&detail), Some(gap()));
        assert_eq!(carried_over("wal_level is replica"), None);
        // Through an error row.
        let error_row = with_error(Some(&gap()), "cannot open the replication connection");
        assert!(error_row.starts_with("cannot open the replication connection; replication slot lost"));
        assert_eq!(carried_over(&error_row), Some(gap()));
    }
}
