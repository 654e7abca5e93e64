//! What the rewriter decided for one SQL string, and what the proxy must do to the server's answer so the
//! client sees what it would have seen without the rewrite.

use std::fmt;

use crate::model::RuleSet;

/// The rewriter's decision for one SQL string (one simple-protocol Query or one Parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send the original bytes unchanged.
    PassThrough,
    /// Send `sql` instead, and apply `statements[i]` to the answer of the i-th statement.
    Rewritten {
        sql: String,
        /// One per statement of the (possibly multi-statement) string, in order.
        statements: Vec<StatementTransform>,
        /// Indexes (into `RuleSet::migrations`) of the migrations the rewrite involved, ascending.
        migrations: Vec<usize>,
        /// True if any statement writes a migrated table (a dual write, for metrics).
        writes: bool,
    },
    /// Answer with an error and send nothing upstream.
    Rejected(Rejection),
}

impl Plan {
    /// Migrations (indexes) the plan rewrote or refused for; empty for a pass-through.
    pub fn migrations(&self) -> &[usize] {
        match self {
            Plan::PassThrough => &[],
            Plan::Rewritten { migrations, .. } => migrations,
            Plan::Rejected(r) => std::slice::from_ref(&r.migration_index),
        }
    }

    /// True if the plan dual-writes (or, for a rejection, refused a write).
    pub fn is_write(&self) -> bool {
        match self {
            Plan::PassThrough => false,
            Plan::Rewritten { writes, .. } => *writes,
            Plan::Rejected(r) => r.reason.is_write(),
        }
    }

    /// The refusal of this plan for a Parse: a rewrite that runs statements of its own around the client's
    /// (COPY FROM STDIN into a migrated table, TRUNCATE of some of a merge's sources) can only be sent as
    /// one simple Query. `rules` are the rules the plan was made for (for the migration's name).
    pub fn extended_protocol_refusal(&self, rules: &RuleSet) -> Option<Rejection> {
        let Plan::Rewritten { statements, migrations, .. } = self else { return None };
        if !statements.iter().any(|t| t.rows == RowsDisposition::Hidden) {
            return None;
        }
        let index = migrations.first().copied().unwrap_or(0);
        let name = rules.migrations.get(index).map(|m| m.name.as_str()).unwrap_or("");
        if !statements.iter().any(|t| t.command_tag == Some(TagRewrite::Copy)) {
            // Only a merge source's TRUNCATE has companions and no COPY tag (`merge_truncate`).
            return Some(Rejection::new(
                name,
                index,
                RejectReason::MergedTablesWrite,
                "TRUNCATE of a source through the extended protocol: the proxy follows it with the shadow's \
                 sync, which only a simple Query can carry; send the TRUNCATE as a simple Query",
            ));
        }
        Some(Rejection::new(
            name,
            index,
            RejectReason::CopyFrom,
            "through the extended protocol; send COPY ... FROM STDIN as a simple Query (psql's \\copy, \
             psycopg's cursor.copy, pgjdbc's CopyManager)",
        ))
    }

    /// `passthrough`, `rewritten` or `rejected`: the `route` label of `dualwrite_queries_total`.
    pub fn route_label(&self) -> &'static str {
        match self {
            Plan::PassThrough => "passthrough",
            Plan::Rewritten { .. } => "rewritten",
            Plan::Rejected(_) => "rejected",
        }
    }
}

/// How the proxy reshapes the server's answer to one rewritten statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementTransform {
    /// Replace the server's command tag (`SELECT n`) by this one, keeping the row count `n`.
    pub command_tag: Option<TagRewrite>,
    pub rows: RowsDisposition,
}

impl StatementTransform {
    /// The server's answer is already what the client expects.
    pub const UNCHANGED: StatementTransform = StatementTransform { command_tag: None, rows: RowsDisposition::Keep };
}

/// The command tag a client expects for a write that was sent as a `WITH ... SELECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagRewrite {
    /// `INSERT 0 n`
    Insert,
    /// `UPDATE n`
    Update,
    /// `DELETE n`
    Delete,
    /// `COPY n`: the dual-write INSERT of a COPY FROM STDIN answers for the COPY (see `copy`).
    Copy,
}

impl TagRewrite {
    /// The tag for `rows` affected rows.
    pub fn tag(self, rows: u64) -> String {
        match self {
            TagRewrite::Copy => format!("COPY {rows}"),
            TagRewrite::Insert => format!("INSERT 0 {rows}"),
            TagRewrite::Update => format!("UPDATE {rows}"),
            TagRewrite::Delete => format!("DELETE {rows}"),
        }
    }
}

/// Whether the client asked for rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowsDisposition {
    /// Relay RowDescription and DataRows as the server sends them.
    Keep,
    /// The client's statement returns no rows: drop RowDescription and DataRows, and answer NoData to a
    /// Describe of the statement or portal.
    Suppress,
    /// A statement the proxy added around the client's (COPY FROM STDIN's staging): drop its whole answer,
    /// command tag included. Only a simple Query carries such a plan.
    Hidden,
    /// The statement answers one row whose one value is the row count of the client's command tag (a COPY
    /// FROM STDIN's rows, read back after its dual-write block, see `copy_block`): the count goes into the
    /// tag, RowDescription and the row are dropped. Only a simple Query carries such a plan.
    CountRow,
}

/// A statement the proxy must refuse rather than let through (SQLSTATE 0A000, feature_not_supported; 55000,
/// object_not_in_prerequisite_state, while the migration's schema is unsafe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub sqlstate: &'static str,
    /// The migration's name.
    pub migration: String,
    /// The migration's index in `RuleSet::migrations`.
    pub migration_index: usize,
    pub reason: RejectReason,
    /// Human-readable, names the migration and the reason.
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(migration: &str, migration_index: usize, reason: RejectReason, detail: &str) -> Self {
        let mut message = format!("dualwrite: statement refused for migration \"{migration}\": {}", reason.describe());
        if !detail.is_empty() {
            message.push_str(" (");
            message.push_str(detail);
            message.push(')');
        }
        Rejection { sqlstate: reason.sqlstate(), migration: migration.to_string(), migration_index, reason, message }
    }

    /// A refusal whose reason's general description does not fit: `description` says what is refused.
    pub(crate) fn described(migration: &str, migration_index: usize, reason: RejectReason, description: &str) -> Self {
        let message = format!("dualwrite: statement refused for migration \"{migration}\": {description}");
        Rejection { sqlstate: reason.sqlstate(), migration: migration.to_string(), migration_index, reason, message }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a statement was refused. `as_str` is the `reason` label of `dualwrite_rejected_statements_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// An UPDATE assigns a key column (or a column a key is computed from).
    KeyChangingUpdate,
    Merge,
    CopyFrom,
    /// DDL (or another statement kind with no dual-write form) naming a migrated table.
    Ddl,
    /// The parser could not read a statement that names a migrated table and needs a rewrite.
    Unparseable,
    /// A data-modifying CTE (`WITH x AS (DELETE ...)`) on a migrated table.
    DataModifyingCte,
    /// A RETURNING list that reads a FROM/USING table of an UPDATE/DELETE, or whose schema-qualified
    /// reference to the written row would bind to another relation once rewritten (`scopes`).
    UnsupportedReturning,
    /// A write in the old shape after `complete`: the old table is retired and the shadow cannot take it.
    RetiredVersionWrite,
    /// A write in the new shape of a split migration (several shadow tables), whose new shape no single
    /// table holds: only old-shaped writes are dual-written into every target.
    SplitNewShapeWrite,
    /// A statement on an old table of a merge (several old tables, one shadow) that the proxy does not
    /// dual-write: anything but an old-shaped INSERT/UPDATE/DELETE in `dual_write`, or a read in the new
    /// shape (described in the message).
    MergedTablesWrite,
    /// A write naming a shadow table itself while the migration keeps both tables in step (`dual_write`,
    /// `cutover`): it would change the shadow alone, a divergence that VERIFY reports and REPAIR undoes.
    ShadowWrite,
    /// A write in the new version's shape (the shadow its primary) in `dual_write` before the backfill has
    /// finished: the shadow does not hold the rows not copied yet, so the write would miss them (an UPDATE
    /// or DELETE) or overwrite one (an INSERT of such a key upserts over the old table's row).
    BackfillPending,
    /// Another write form the rewriter cannot make safe (described in the message).
    UnsupportedWrite,
    /// The migration's rules could not be compiled (a rule set built in code without validation).
    InvalidRules,
    /// The plan depends on which relation an unqualified name means in the session, and the proxy cannot
    /// ask the session's server at this point (after a statement of the same simple-Query string that may
    /// change it; see the proxy's name resolution); or a schema-qualified column reference outside a
    /// RETURNING list would bind to another relation once rewritten (`scopes`, described in the message).
    UnresolvedName,
    /// A write while the schema of the migration's tables is unsafe for dual writes (`Route::unsafe_schema`):
    /// not a form the proxy lacks but a state of the database the operator must fix (SQLSTATE 55000).
    UnsafeSchema,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::KeyChangingUpdate => "key_changing_update",
            RejectReason::Merge => "merge",
            RejectReason::CopyFrom => "copy_from",
            RejectReason::Ddl => "ddl",
            RejectReason::Unparseable => "unparseable",
            RejectReason::DataModifyingCte => "data_modifying_cte",
            RejectReason::UnsupportedReturning => "unsupported_returning",
            RejectReason::RetiredVersionWrite => "retired_version_write",
            RejectReason::SplitNewShapeWrite => "split_new_shape_write",
            RejectReason::MergedTablesWrite => "merged_tables_unsupported",
            RejectReason::ShadowWrite => "shadow_write",
            RejectReason::BackfillPending => "backfill_pending",
            RejectReason::UnsupportedWrite => "unsupported_write",
            RejectReason::InvalidRules => "invalid_rules",
            RejectReason::UnresolvedName => "unresolved_name",
            RejectReason::UnsafeSchema => "unsafe_schema",
        }
    }

    /// The SQLSTATE of a refusal for this reason.
    pub fn sqlstate(self) -> &'static str {
        match self {
            RejectReason::UnsafeSchema => "55000",
            _ => "0A000",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            RejectReason::KeyChangingUpdate => {
                "an UPDATE that changes a key column of a migrated table is not supported"
            }
            RejectReason::Merge => "MERGE is not supported",
            RejectReason::CopyFrom => "this form of COPY FROM into a migrated table is not supported",
            RejectReason::Ddl => "DDL on a migrated table is not allowed while the migration runs",
            RejectReason::Unparseable => {
                "the statement names a migrated table but could not be parsed, so it cannot be rewritten safely"
            }
            RejectReason::DataModifyingCte => "a data-modifying WITH clause on a migrated table is not supported",
            RejectReason::UnsupportedReturning => {
                "a RETURNING list that reads the FROM/USING tables of the statement is not supported"
            }
            RejectReason::RetiredVersionWrite => {
                "the migration is complete, so writes in the old version's shape are no longer accepted"
            }
            RejectReason::SplitNewShapeWrite => {
                "the migration splits the table into several shadow tables, so writes in the new version's shape \
                 are not supported; write in the old version's shape, which keeps every shadow in sync"
            }
            RejectReason::MergedTablesWrite => {
                "the migration merges several old tables into one shadow; only old-shaped INSERT, UPDATE, \
                 DELETE, TRUNCATE and COPY FROM STDIN in dual_write and cutover, and old-shaped reads, are \
                 supported on them (new-shape writes name the merged shadow)"
            }
            RejectReason::ShadowWrite => {
                "the statement writes the migration's shadow table itself, which would change the shadow alone \
                 while the proxy keeps both tables in step; write the old table's name instead (in the new \
                 shape: SET dualwrite.version to the new version first; a merge's shadow takes plain INSERT, \
                 UPDATE and DELETE, mirrored into its sources), or set the migration off to work on the shadow \
                 by hand"
            }
            RejectReason::BackfillPending => {
                "the migration's backfill has not finished, so its shadow does not hold every row yet: a write in \
                 the new version's shape would miss the rows not copied (an UPDATE or DELETE finds none of them) \
                 or overwrite one (an INSERT of such a key replaces the old table's row); write in the old \
                 version's shape until DUALWRITE STATUS shows the backfill done"
            }
            RejectReason::UnsupportedWrite => "this write form is not supported",
            RejectReason::InvalidRules => "its rules are invalid",
            RejectReason::UnresolvedName => {
                "the proxy cannot tell which relation the table's unqualified name means in this session here: \
                 the statement follows, in the same Query string, one that may change the search_path or \
                 create or drop a table of that name; send it on its own, or qualify the name"
            }
            RejectReason::UnsafeSchema => {
                "the schema of the migration's tables changed since it was registered in a way that lets a dual \
                 write change the wrong rows, so its writes are refused until the schema is fixed (reads are \
                 served as before)"
            }
        }
    }

    fn is_write(self) -> bool {
        !matches!(self, RejectReason::Unparseable | RejectReason::InvalidRules | RejectReason::UnresolvedName)
    }
}
