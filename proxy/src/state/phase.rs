//! Migration phases and the rules for moving between them (pure; enforced by `state::store` inside the
//! transaction that applies a change).
//!
//! | from \ to    | off          | dual_write          | cutover                                  | complete      |
//! |--------------|--------------|---------------------|------------------------------------------|---------------|
//! | off          | no-op        | yes                 | no                                       | no            |
//! | dual_write   | FORCE        | no-op               | backfill done and last verify clean, or FORCE | no (cutover first) |
//! | cutover      | FORCE        | yes (= ROLLBACK)    | no-op                                    | yes           |
//! | complete     | FORCE        | no (old table stale)| no                                       | no-op         |
//!
//! `ROLLBACK` is allowed from dual_write and cutover: it returns to dual_write with reads on each session's
//! own version (read_source NULL, percent 100). Entering `complete` routes every read to the new version,
//! because the old table is no longer written. Read routing (`ROUTE`) is allowed in dual_write and cutover.
//!
//! The source of truth (what VERIFY counts against and REPAIR never writes) is the old table before
//! cutover (`off`, `dual_write`: it is what the application's logical name means) and the shadow from
//! cutover on; at `complete` the old table is retired and there is nothing to verify.

pub use dualwrite_rules::Phase;

/// What the transition check needs to know about the migration besides its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// The backfill has copied every row (state `done`).
    pub backfill_done: bool,
    /// The most recent verify run finished and found no divergence.
    pub last_verify_clean: bool,
}

/// The outcome of asking for a phase change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Already in that phase: nothing to write, nothing to audit.
    Unchanged,
    /// Allowed.
    Allowed,
    /// Refused, with the reason shown to the operator.
    Refused(String),
}

/// May a migration in `from` be moved to `to`?
pub fn check_transition(from: Phase, to: Phase, force: bool, readiness: Readiness) -> Transition {
    use Phase::*;
    if from == to {
        return Transition::Unchanged;
    }
    match (from, to) {
        (Off, DualWrite) | (Cutover, DualWrite) | (Cutover, Complete) => Transition::Allowed,
        (_, Off) if force => Transition::Allowed,
        (_, Off) => Transition::Refused(format!(
            "turning a migration off from {from} stops dual writes; add FORCE to do it anyway"
        )),
        (DualWrite, Cutover) => {
            if force || (readiness.backfill_done && readiness.last_verify_clean) {
                Transition::Allowed
            } else {
                let mut missing = Vec::new();
                if !readiness.backfill_done {
                    missing.push("the backfill is not done");
                }
                if !readiness.last_verify_clean {
                    missing.push("no verify since the backfill finished found the tables equal");
                }
                Transition::Refused(format!(
                    "cutover needs a finished backfill and a clean verify: {}; add FORCE to cut over anyway",
                    missing.join(" and ")
                ))
            }
        }
        (DualWrite, Complete) | (Off, Complete) => {
            Transition::Refused("complete is only reachable from cutover".to_string())
        }
        (Off, Cutover) => Transition::Refused("cutover is only reachable from dual_write".to_string()),
        (Complete, _) => Transition::Refused(
            "the migration is complete: the old table is no longer written, so it cannot be resumed".to_string(),
        ),
        // Every other pair is covered above; keep the match total without a panic.
        _ => Transition::Refused(format!("cannot move from {from} to {to}")),
    }
}

/// May a migration in `from` be rolled back (to dual_write, reads on each session's own version)?
pub fn check_rollback(from: Phase) -> Transition {
    match from {
        Phase::DualWrite | Phase::Cutover => Transition::Allowed,
        Phase::Off => Transition::Refused("the migration is off: there is nothing to roll back".to_string()),
        Phase::Complete => {
            Transition::Refused("the migration is complete: rollback is only possible before complete".to_string())
        }
    }
}

/// The table that holds the truth about the rows in a phase: divergences are counted relative to it and a
/// repair rewrites the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceOfTruth {
    Old,
    Shadow,
}

impl SourceOfTruth {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceOfTruth::Old => "old",
            SourceOfTruth::Shadow => "shadow",
        }
    }
}

/// The source of truth in `phase`, or why the two tables are not compared in it. A migration without a
/// state row yet is in its initial phase, `off` or `dual_write`: the old table.
pub fn source_of_truth(phase: Option<Phase>) -> Result<SourceOfTruth, String> {
    match phase {
        None | Some(Phase::Off | Phase::DualWrite) => Ok(SourceOfTruth::Old),
        Some(Phase::Cutover) => Ok(SourceOfTruth::Shadow),
        Some(Phase::Complete) => Err(
            "the migration is complete: the old table is no longer written, so there is nothing to verify or repair"
                .to_string(),
        ),
    }
}

/// Does the scheduled verify look at a migration in `phase`? Only while both tables are kept in sync:
/// in `off` they drift apart by design, at `complete` the old table is retired.
pub fn verified_on_schedule(phase: Phase) -> bool {
    matches!(phase, Phase::DualWrite | Phase::Cutover)
}

/// May reads be re-routed in `phase`?
pub fn check_route(phase: Phase) -> Transition {
    match phase {
        Phase::DualWrite | Phase::Cutover => Transition::Allowed,
        Phase::Off => Transition::Refused("the migration is off: both versions are not kept in sync".to_string()),
        Phase::Complete => {
            Transition::Refused("the migration is complete: every read goes to the new version".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    const READY: Readiness = Readiness { backfill_done: true, last_verify_clean: true };
    const NOT_READY: Readiness = Readiness { backfill_done: false, last_verify_clean: false };

    fn allowed(t: Transition) -> bool {
        t == Transition::Allowed
    }

    #[test]
    fn same_phase_is_unchanged() {
        for p in Phase::ALL {
            assert_eq!(check_transition(p, p, false, NOT_READY), Transition::Unchanged);
        }
    }

    #[test]
    fn cutover_needs_backfill_and_clean_verify_unless_forced() {
        assert!(allowed(check_transition(DualWrite, Cutover, false, READY)));
        let half = Readiness { backfill_done: true, last_verify_clean: false };
        match check_transition(DualWrite, Cutover, false, half) {
            Transition::Refused(r) => {
                assert!(r.contains("verify") && !r.contains("backfill is not done"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        match check_transition(DualWrite, Cutover, false, NOT_READY) {
            Transition::Refused(r) => assert!(r.contains("backfill is not done") && r.contains("FORCE"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(allowed(check_transition(DualWrite, Cutover, true, NOT_READY)));
    }

    #[test]
    fn complete_only_from_cutover() {
        assert!(allowed(check_transition(Cutover, Complete, false, NOT_READY)));
        assert!(!allowed(check_transition(DualWrite, Complete, false, READY)));
        assert!(!allowed(check_transition(DualWrite, Complete, true, READY)));
        assert!(!allowed(check_transition(Off, Complete, true, READY)));
    }

    #[test]
    fn off_needs_force() {
        for from in [DualWrite, Cutover, Complete] {
            assert!(!allowed(check_transition(from, Off, false, READY)));
            assert!(allowed(check_transition(from, Off, true, READY)));
        }
        assert!(allowed(check_transition(Off, DualWrite, false, NOT_READY)));
    }

    #[test]
    fn complete_is_final_except_off() {
        for to in [DualWrite, Cutover] {
            assert!(!allowed(check_transition(Complete, to, true, READY)));
        }
    }

    #[test]
    fn rollback_before_complete_only() {
        assert!(allowed(check_rollback(DualWrite)));
        assert!(allowed(check_rollback(Cutover)));
        assert!(!allowed(check_rollback(Complete)));
        assert!(!allowed(check_rollback(Off)));
        assert!(allowed(check_transition(Cutover, DualWrite, false, NOT_READY)));
    }

    #[test]
    fn the_shadow_is_the_source_of_truth_from_cutover_on() {
        assert_eq!(source_of_truth(None), Ok(SourceOfTruth::Old));
        assert_eq!(source_of_truth(Some(Off)), Ok(SourceOfTruth::Old));
        assert_eq!(source_of_truth(Some(DualWrite)), Ok(SourceOfTruth::Old));
        assert_eq!(source_of_truth(Some(Cutover)), Ok(SourceOfTruth::Shadow));
        assert!(source_of_truth(Some(Complete)).unwrap_err().contains("complete"));
        let scheduled: Vec<Phase> = Phase::ALL.into_iter().filter(|p| verified_on_schedule(*p)).collect();
        assert_eq!(scheduled, [DualWrite, Cutover]);
    }

    #[test]
    fn routing_only_while_both_tables_are_in_sync() {
        assert!(allowed(check_route(DualWrite)));
        assert!(allowed(check_route(Cutover)));
        assert!(!allowed(check_route(Off)));
        assert!(!allowed(check_route(Complete)));
    }
}
