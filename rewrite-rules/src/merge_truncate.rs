//! TRUNCATE of the old tables of a merge (README: Merging tables). The merged shadow is the sources FULL
//! JOINed on the key, so emptying some sources means: every shadow row loses their columns, and a row no
//! other source still holds goes. The client's TRUNCATE runs as written and is followed, in the same
//! simple-Query string (one transaction, implicit or the client's), by one statement per merge:
//!
//! ```sql
//! TRUNCATE profiles;
//! WITH __dw_lock AS (SELECT __dw_t.id, (__dw_t.email IS NULL) AS __dw_gone FROM public.users AS __dw_t
//!                    WHERE (__dw_t.email IS NULL) OR __dw_t.display_name IS NOT NULL OR __dw_t.bio IS NOT NULL
//!                    FOR UPDATE OF __dw_t),
//!      __dw_shadow AS (DELETE FROM public.users AS __dw_t USING __dw_lock AS __dw_l
//!                      WHERE __dw_t.id = __dw_l.id AND __dw_l.__dw_gone),
//!      __dw_shadow_null AS (UPDATE public.users AS __dw_t SET display_name = NULL, bio = NULL
//!                           FROM __dw_lock AS __dw_l WHERE __dw_t.id = __dw_l.id AND NOT __dw_l.__dw_gone)
//! SELECT count(*) FROM __dw_lock
//! ```
//!
//! The order matters under concurrency. The TRUNCATE first takes the source's ACCESS EXCLUSIVE lock, so
//! every transaction that wrote it through the proxy has committed (or rolled back) and none can write
//! it, nor write another source (each sync reads the other sources' tables), until this one ends. Then, as
//! a merge DELETE does (`compiled::compile_source`), the shadow rows are locked `FOR UPDATE` and the other
//! sources' `present` columns are read on their latest version, which settles a concurrent DELETE of
//! another source's row of the same key either way. When every source of a merge is truncated, the
//! shadow is simply added to the TRUNCATE (the join of empty tables is empty), as for a plain migration.
//! The cost of that order: a transaction that deleted another source's rows (a DELETE locks their shadow
//! rows without reading this source; an INSERT or UPDATE reads it, so the TRUNCATE waits for that
//! transaction instead) and then writes a source again waits on the truncated source while the TRUNCATE
//! waits on its row; PostgreSQL aborts one of the two (40P01), as for any two transactions locking in
//! opposite orders.
//!
//! `CASCADE` is refused: it also empties every table with a foreign key to the source, which the statement
//! does not name, so the proxy cannot tell which shadow columns they hold (another source, or another
//! migration's old table). Without it, PostgreSQL refuses a TRUNCATE of a referenced table unless the
//! referencing ones are in the statement too. `RESTART IDENTITY` restarts the truncated tables' own
//! sequences only (the shadow's too when it is truncated as a whole), as it would without the proxy.

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::ast::{CascadeOption, Statement, TruncateTableTarget};

use crate::compiled::{Compiled, CompiledMigration};
use crate::model::Phase;
use crate::names::{quote_ident, TableName};
use crate::plan::{RejectReason, Rejection};
use crate::route::{Route, Side};
use crate::template::parse_statement;

/// The merge sources one TRUNCATE names, per migration.
#[derive(Default)]
pub(crate) struct MergeTruncation {
    /// Migration index -> (the truncated sources' positions, the first target naming one of them).
    merges: BTreeMap<usize, (BTreeSet<usize>, TruncateTableTarget)>,
}

impl MergeTruncation {
    /// Records `target`, a source of merge `index`, or refuses the statement.
    pub fn add(
        &mut self,
        compiled: &Compiled,
        route: &Route,
        index: usize,
        target: &TruncateTableTarget,
        cascade: Option<&CascadeOption>,
    ) -> Result<(), Rejection> {
        let m = &compiled.migrations[index];
        let mr = route.get(index);
        let refuse = |detail: &str| Err(Rejection::new(&m.name, index, RejectReason::MergedTablesWrite, detail));
        if mr.version == Side::New {
            return refuse("TRUNCATE of a source in a new-version session");
        }
        if !matches!(mr.phase, Phase::DualWrite | Phase::Cutover) {
            return refuse(&format!("TRUNCATE in phase {}", mr.phase));
        }
        if matches!(cascade, Some(CascadeOption::Cascade)) {
            return refuse(
                "TRUNCATE ... CASCADE of a source: it also empties the tables referencing it, whose part of the \
                 shadow the proxy cannot tell; truncate them by name instead",
            );
        }
        let reaches = route.unqualified_reaches(index);
        let Some(position) = TableName::from_object_name(&target.name)
            .and_then(|name| m.sources.iter().position(|s| name.denotes(&s.table, reaches)))
        else {
            return refuse("TRUNCATE of a table that is not one of the merge's sources");
        };
        self.merges.entry(index).or_insert_with(|| (BTreeSet::new(), target.clone())).0.insert(position);
        Ok(())
    }

    /// Completes the TRUNCATE: adds to `targets` the shadow of each merge whose every source is truncated,
    /// and returns the statement syncing the shadow of each other merge, to run after it (hidden).
    pub fn finish(
        self,
        compiled: &Compiled,
        targets: &mut Vec<TruncateTableTarget>,
    ) -> Result<Vec<Statement>, Rejection> {
        let mut after = Vec::new();
        for (index, (sources, first)) in self.merges {
            let m = &compiled.migrations[index];
            if sources.len() == m.sources.len() {
                targets.push(TruncateTableTarget { name: m.shadow.to_object_name(), ..first });
                continue;
            }
            let sync = shadow_sync(m, &sources)
                .map_err(|why| Rejection::new(&m.name, index, RejectReason::InvalidRules, &why))?;
            after.push(sync);
        }
        Ok(after)
    }
}

/// The statement that leaves `m`'s shadow as the join of its sources once the sources at `truncated` (not
/// all of them) are empty (see the module documentation).
pub(crate) fn shadow_sync(m: &CompiledMigration, truncated: &BTreeSet<usize>) -> Result<Statement, String> {
    let shadow = &m.shadow;
    let key_cols: Vec<String> = m.key.iter().map(|c| quote_ident(c)).collect();
    let column = |c: &str| format!("__dw_t.{}", quote_ident(c));
    let (emptied, kept): (Vec<_>, Vec<_>) = m.sources.iter().enumerate().partition(|(i, _)| truncated.contains(i));
    // No source left holds the row: it goes.
    let gone = kept.iter().map(|(_, s)| format!("{} IS NULL", column(&s.present))).collect::<Vec<_>>().join(" AND ");
    let own: Vec<&String> = emptied.iter().flat_map(|(_, s)| &s.own).collect();
    // Only the rows the TRUNCATE changes are locked and written.
    let holds_emptied = own.iter().map(|c| format!("{} IS NOT NULL", column(c))).collect::<Vec<_>>().join(" OR ");
    let matching = key_cols.iter().map(|k| format!("__dw_t.{k} = __dw_l.{k}")).collect::<Vec<_>>().join(" AND ");
    let nulls = own.iter().map(|c| format!("{} = NULL", quote_ident(c))).collect::<Vec<_>>().join(", ");
    parse_statement(&format!(
        "WITH __dw_lock AS (SELECT {keys}, ({gone}) AS __dw_gone FROM {shadow} AS __dw_t \
         WHERE ({gone}) OR {holds_emptied} FOR UPDATE OF __dw_t), \
         __dw_shadow AS (DELETE FROM {shadow} AS __dw_t USING __dw_lock AS __dw_l WHERE {matching} AND __dw_l.__dw_gone), \
         __dw_shadow_null AS (UPDATE {shadow} AS __dw_t SET {nulls} FROM __dw_lock AS __dw_l \
         WHERE {matching} AND NOT __dw_l.__dw_gone) \
         SELECT count(*) FROM __dw_lock",
        keys = key_cols.iter().map(|k| format!("__dw_t.{k}")).collect::<Vec<_>>().join(", "),
    ))
}
