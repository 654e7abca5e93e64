//! Statements that wait for the backfill: in `dual_write`, until the backfill has copied every row, the
//! shadow lacks the rows not copied yet, so a write whose primary is the shadow (a new-shaped write, or one
//! naming a merge's shadow) would miss them (an UPDATE or DELETE finds none) or overwrite one (an INSERT of
//! such a key upserts over the old table's row), and a read of a merge's shadow, the new shape's only name,
//! would answer with the rows copied so far. They are refused until the backfill is done; the route's
//! `backfill_pending` says which migrations wait. (Other reads are served by the old tables meanwhile, see
//! `Route`'s read source; a cutover forced before the backfill finished reads and writes as forced.)

use crate::compiled::Compiled;
use crate::model::Phase;
use crate::plan::{RejectReason, Rejection};
use crate::route::{Route, Side};

/// A write naming merge `index`'s shadow in `dual_write` before its backfill finished is refused: the
/// shadow does not hold the keys not copied yet, so an UPDATE or DELETE would miss their rows, and an
/// INSERT of such a key would succeed where the row exists and its mirror overwrite that key's source
/// rows. (In `cutover` the backfill has finished, unless the operator forced the cutover.)
pub(crate) fn refuse_unbackfilled_merge(compiled: &Compiled, route: &Route, index: usize) -> Result<(), Rejection> {
    if route.get(index).phase != Phase::DualWrite || !route.backfill_pending(index) {
        return Ok(());
    }
    let m = &compiled.migrations[index];
    let detail = format!(
        "the backfill of {} has not finished, so its merged shadow does not hold every key yet; write {} \
         until it has",
        m.name,
        m.sources.iter().map(|s| s.table.to_string()).collect::<Vec<_>>().join(" or ")
    );
    Err(Rejection::new(&m.name, index, RejectReason::ShadowWrite, &detail))
}

/// A write in the new version's shape of migration `index` in `dual_write` before its backfill finished is
/// refused, for the reasons a merge's shadow write is ([`refuse_unbackfilled_merge`]): its primary is the
/// shadow, which does not hold the rows not copied yet. (A cutover forced before the backfill finished
/// writes as forced.)
pub(crate) fn refuse_unbackfilled_new_version(route: &Route, index: usize, name: &str) -> Result<(), Rejection> {
    let mr = route.get(index);
    if mr.phase != Phase::DualWrite || mr.version != Side::New || !route.backfill_pending(index) {
        return Ok(());
    }
    Err(Rejection::new(name, index, RejectReason::BackfillPending, ""))
}

/// A read naming merge `index`'s shadow (`object`) in `dual_write` before its backfill finished is refused:
/// the shadow answers with the rows copied so far, and unlike a single table's shadow its name is the one the
/// new version's sessions read. (A single table's shadow named by its own name is read as it is: that name is
/// the operator's, not the application's.)
pub(crate) fn refuse_unbackfilled_merge_read(
    compiled: &Compiled,
    route: &Route,
    index: usize,
    object: &impl std::fmt::Display,
) -> Result<(), Rejection> {
    let m = &compiled.migrations[index];
    if !m.is_merge() || route.get(index).phase != Phase::DualWrite || !route.backfill_pending(index) {
        return Ok(());
    }
    let description = format!(
        "a read of {object}, the merged shadow, before the backfill of {} has finished would see only the rows \
         copied so far; read {} until DUALWRITE STATUS shows the backfill done",
        m.name,
        m.sources.iter().map(|s| s.table.to_string()).collect::<Vec<_>>().join(" and ")
    );
    Err(Rejection::described(&m.name, index, RejectReason::BackfillPending, &description))
}
