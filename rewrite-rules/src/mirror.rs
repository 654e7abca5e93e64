//! Mirrored writes of a merge's shadow (README: Merging tables): a plain INSERT, UPDATE or DELETE naming
//! the merged shadow, in `dual_write` or `cutover` and from a session of either version, runs on the
//! shadow and mirrors its rows into every source through that source's `backward`, in the one statement
//! (the sync CTEs of `writes`):
//!
//! ```sql
//! WITH __dw_primary AS (UPDATE public.users AS users SET bio = 'b' WHERE id = 1 RETURNING users.*),
//!      __dw_old_2 AS (INSERT INTO public.profiles (id, name, bio) SELECT id, display_name, bio FROM __dw_primary
//!                     WHERE display_name IS NOT NULL OR bio IS NOT NULL ON CONFLICT (id) DO UPDATE SET bio = EXCLUDED.bio),
//!      __dw_old_2_gone AS (DELETE FROM public.profiles AS __dw_t USING (SELECT id AS id FROM __dw_primary
//!                          WHERE NOT (display_name IS NOT NULL OR bio IS NOT NULL)
//!                            AND dualwrite.merge_row_held((email IS NOT NULL) OR (display_name IS NOT NULL OR
//!                                bio IS NOT NULL), 'users_merge_tables', ..., ROW(id)::TEXT)) AS __dw_k
//!                          WHERE __dw_t.id = __dw_k.id)
//! SELECT FROM __dw_primary AS users
//! ```
//!
//! It is the inverse of how the merge fills the shadow, where a source without the key leaves its columns
//! NULL: a source's row is upserted where any of its non-key shadow columns is set and deleted where all
//! are NULL; a DELETE of shadow rows deletes their keys from every source. A row left with every source's
//! columns NULL is the image of no source row, so the statement fails there (23514, raised by the proxy's
//! `dualwrite.merge_row_held`) instead of leaving the shadow a row the sources cannot show. An UPDATE mirrors only into the
//! sources whose columns it can change. What has no such inverse stays refused (`shadow_write`): an UPDATE
//! changing the key, and TRUNCATE, COPY FROM, MERGE and data-modifying CTEs naming the shadow.

use std::collections::HashSet;

use sqlparser::ast::{OnConflictAction, OnInsert, Statement};

use crate::compiled::{CompiledMigration, MIRROR_EVERY_ROW, MIRROR_HOLDING, MIRROR_NOT_HOLDING};
use crate::dml::{assigned_columns, partial_upsert, Kind};
use crate::plan::{RejectReason, Rejection};

/// The sync CTEs mirroring a write of merge `m`'s shadow (migration `index`) into its sources, or the
/// refusal of a write that cannot be mirrored.
pub(crate) fn mirror_syncs(
    m: &CompiledMigration,
    index: usize,
    kind: Kind,
    dml: &Statement,
) -> Result<Vec<(String, Statement)>, Rejection> {
    let refuse_key_change = |assigned: &HashSet<String>| {
        let mirrors = m.sources.iter().map(|s| &s.mirror);
        match assigned.iter().find(|c| mirrors.clone().any(|d| d.key_sources.contains(*c))) {
            Some(column) => Err(Rejection::new(
                &m.name,
                index,
                RejectReason::ShadowWrite,
                &format!(
                    "{column} feeds the key ({}) of the merged shadow {}; an UPDATE moving a row to another key \
                     cannot be mirrored into the sources",
                    m.key.join(", "),
                    m.shadow
                ),
            )),
            None => Ok(()),
        }
    };
    let mut syncs = Vec::new();
    for source in &m.sources {
        let mirror = &source.mirror;
        let (holding, not_holding) = (&mirror.syncs[MIRROR_HOLDING], &mirror.syncs[MIRROR_NOT_HOLDING]);
        match (kind, dml) {
            (Kind::Delete, _) => {
                let every = &mirror.syncs[MIRROR_EVERY_ROW];
                syncs.push((every.cte_name.clone(), every.delete.clone()));
            }
            (Kind::Insert, Statement::Insert(insert)) => {
                if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
                    if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                        refuse_key_change(&assigned_columns(&update.assignments))?;
                    }
                }
                syncs.push((holding.cte_name.clone(), holding.upsert.clone()));
                syncs.push((not_holding.cte_name.clone(), not_holding.delete.clone()));
            }
            (Kind::Update, Statement::Update(update)) => {
                let assigned = assigned_columns(&update.assignments);
                refuse_key_change(&assigned)?;
                // A source none of whose columns the UPDATE can change keeps its row as it is.
                let changes =
                    !mirror.affected_by(&assigned).is_empty() || source.own.iter().any(|c| assigned.contains(c));
                if changes {
                    syncs.push((holding.cte_name.clone(), partial_upsert(mirror, holding, &assigned)));
                    syncs.push((not_holding.cte_name.clone(), not_holding.delete.clone()));
                }
            }
            _ => unreachable!("kind follows the statement"),
        }
    }
    Ok(syncs)
}
