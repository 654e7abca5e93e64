//! The audit log's tamper evidence: checking the hash chain that schema version 2 puts on
//! `dualwrite.audit_log` (`DUALWRITE AUDIT VERIFY`).
//!
//! The chain, as the schema's triggers write it:
//! - every append runs a `BEFORE INSERT` trigger that locks the one row of `dualwrite.audit_chain_head`,
//!   gives the row the next id (so id order is chain order, whatever the sequence handed out) and sets
//!   `prev_hash` = the head's hash (empty for the first row) and `hash = sha256(prev_hash || canonical)`,
//!   then moves the head to the row. The hash is computed by Postgres in the inserting transaction; the
//!   head's row lock serialises appends across proxies, so the chain cannot fork.
//! - `canonical` (`dualwrite.audit_canonical`) is the UTF-8 text of the jsonb array
//!   `[id, at, migration, action, role, client_addr, before, after]`, with `at` in UTC as
//!   `YYYY-MM-DDTHH:MI:SS.ffffffZ` (independent of the session's TimeZone and DateStyle), NULLs as JSON
//!   null and `before`/`after` as jsonb (whose text form is normalised: key order, whitespace).
//! - UPDATE, DELETE and TRUNCATE of the log and the head are refused by triggers for every role, and the
//!   privileges are revoked from PUBLIC. A superuser can still disable the triggers or set
//!   `session_replication_role = replica`; that is what the chain is for.
//!
//! A row is a broken link when its content no longer hashes to its `hash` (edited), when its `prev_hash`
//! is not the hash of the row before it (a row deleted or re-hashed in between), or when it has no hash
//! (inserted with the triggers off). The head must name the last row with its hash, which catches rows
//! deleted at the end. Someone able to rewrite every hash from a point on and the head as well is only
//! caught by comparing `head_hash` with a copy kept elsewhere, which is why VERIFY returns it.

use tokio_postgres::GenericClient;

use super::StateError;

/// What `DUALWRITE AUDIT VERIFY` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    /// Rows of the log examined.
    pub rows: i64,
    /// The first broken link, in id order; `None` when the chain is intact.
    pub broken: Option<BrokenLink>,
    /// The head's hash (hex): the whole chain's fingerprint, to keep outside the database.
    pub head_hash: String,
}

/// The first row at which the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The row's id (for a log cut short at its end: the id the head names as the last).
    pub id: i64,
    /// The row the broken one comes after in the log, if any.
    pub previous_id: Option<i64>,
    pub problem: String,
}

/// Checks every row's hash and link, oldest first, then the head; stops at the first broken link.
pub async fn verify(client: &impl GenericClient) -> Result<ChainCheck, StateError> {
    let first = client
        .query_opt(
            "WITH c AS (
                 SELECT id, hash, prev_hash,
                        sha256(coalesce(prev_hash, ''::bytea) || dualwrite.audit_canonical(a)) AS computed,
                        lag(hash) OVER (ORDER BY id) AS previous_hash,
                        lag(id) OVER (ORDER BY id) AS previous_id,
                        row_number() OVER (ORDER BY id) = 1 AS first
                 FROM dualwrite.audit_log a)
             SELECT id, previous_id,
                    CASE WHEN hash IS NULL OR prev_hash IS NULL THEN 'unchained'
                         WHEN hash <> computed THEN 'changed'
                         ELSE 'unlinked' END
             FROM c
             WHERE hash IS NULL OR prev_hash IS NULL OR hash <> computed
                OR prev_hash <> CASE WHEN first THEN ''::bytea ELSE previous_hash END
             ORDER BY id LIMIT 1",
            &[],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM dualwrite.audit_log),
                    h.last_id, encode(h.hash, 'hex'),
                    l.id, l.hash = h.hash
             FROM dualwrite.audit_chain_head h
             LEFT JOIN LATERAL (SELECT id, hash FROM dualwrite.audit_log ORDER BY id DESC LIMIT 1) l ON true",
            &[],
        )
        .await?;
    let (rows, head_last, head_hash): (i64, Option<i64>, String) = (row.get(0), row.get(1), row.get(2));
    let (last_id, last_matches): (Option<i64>, Option<bool>) = (row.get(3), row.get(4));
    let broken = match first {
        Some(first) => {
            let (id, previous_id, kind): (i64, Option<i64>, String) = (first.get(0), first.get(1), first.get(2));
            let problem = match kind.as_str() {
                "unchained" => "the row has no hash: it was written with the audit triggers disabled".to_string(),
                "changed" => "the row's content does not match its hash: it was changed after it was written".into(),
                _ => match previous_id {
                    Some(previous) => format!(
                        "the row does not link to row {previous} before it: rows between them were deleted, or \
                         row {previous} was changed and re-hashed"
                    ),
                    None => "the first row does not start the chain: rows before it were deleted".to_string(),
                },
            };
            Some(BrokenLink { id, previous_id, problem })
        }
        None if head_last != last_id || last_matches == Some(false) => Some(BrokenLink {
            id: head_last.unwrap_or(0),
            previous_id: last_id,
            problem: match (head_last, last_id) {
                (Some(head), Some(last)) if head > last => {
                    format!("the chain head names row {head} as the last, but the log ends at row {last}: rows at its end were deleted")
                }
                (Some(head), None) => format!("the chain head names row {head} as the last, but the log is empty"),
                _ => "the chain head does not match the log's last row".to_string(),
            },
        }),
        None => None,
    };
    Ok(ChainCheck { rows, broken, head_hash })
}
