//! What a session's statements are rewritten for: per migration, its phase, the shape (version) the
//! session's SQL is written in and the physical table that answers its reads. A `Route` is part of the plan
//! cache key, so it is small, `Hash` and `Eq`.

use crate::model::{Phase, RuleSet};

/// One of the two tables (and shapes) of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The old table and its shape (`versions.old`).
    Old,
    /// The shadow table and its shape (`versions.new`).
    New,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }
}

/// How one session sees one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigrationRoute {
    pub phase: Phase,
    /// The shape the session's SQL is written in, always under the old table's (logical) name.
    pub version: Side,
    /// Which physical table answers the session's reads.
    pub read_source: Side,
}

impl MigrationRoute {
    /// A session on `version` reading its own version's table.
    pub fn own(phase: Phase, version: Side) -> MigrationRoute {
        MigrationRoute { phase, version, read_source: version }
    }
}

/// The routes of one session, indexed like [`RuleSet::migrations`]. A migration without an entry (a route
/// shorter than the rule set) is treated as `off`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Route {
    pub per_migration: Vec<MigrationRoute>,
    /// Migrations (indexes, ascending) whose old table an unqualified reference to its name does not reach
    /// in this session: another relation of that name comes first on its `search_path` (a tenant schema,
    /// a temporary table), or the table's schema is not on the path at all. Unqualified references to
    /// their names are then left alone; schema-qualified references still denote the migrated table.
    pub unqualified_elsewhere: Vec<usize>,
    /// Migrations (indexes, ascending) none of whose shadow tables an unqualified reference to its name
    /// reaches in this session. A write naming a shadow is refused while both tables are kept (see
    /// `reads::ReadRouter::refuse_shadow_write`), so this decides whether an unqualified `INSERT INTO
    /// users_v2` is that write or one to another relation of the name.
    pub shadow_unqualified_elsewhere: Vec<usize>,
    /// Migrations (indexes, ascending) whose backfill has not finished: their shadow does not hold every
    /// key yet. A write naming a merge's shadow, and any write in a migration's new shape, is refused in
    /// `dual_write` until it has (see `writes::rewrite_dml`, `copy`).
    pub backfill_pending: Vec<usize>,
    /// Migrations (ascending by index) whose tables' schema changed, after the migration was registered, in
    /// a way that lets a dual write change the wrong rows (the proxy's schema watch found it: a key whose
    /// defaults became separate sources, a merge's `present` column that may now be NULL), each with the
    /// finding. Their writes are refused (55000) until the schema is fixed; reads are served as before.
    pub unsafe_schema: Vec<UnsafeSchema>,
}

/// A migration whose writes wait for its schema to be fixed (see [`Route::unsafe_schema`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnsafeSchema {
    pub migration: usize,
    /// What the schema watch found, as a sentence (for the refusal).
    pub finding: String,
}

impl Route {
    /// Every migration in its initial phase, sessions on the old version reading the old table.
    pub fn initial(rules: &RuleSet) -> Route {
        Route {
            per_migration: rules.migrations.iter().map(|m| MigrationRoute::own(m.initial_phase, Side::Old)).collect(),
            ..Route::default()
        }
    }

    /// The same route for every migration.
    pub fn uniform(rules: &RuleSet, route: MigrationRoute) -> Route {
        Route { per_migration: vec![route; rules.migrations.len()], ..Route::default() }
    }

    /// True if an unqualified reference to migration `migration`'s table name reaches the migrated table.
    pub fn unqualified_reaches(&self, migration: usize) -> bool {
        !self.unqualified_elsewhere.contains(&migration)
    }

    /// True if an unqualified reference to the name of one of migration `migration`'s shadow tables
    /// reaches that shadow.
    pub fn shadow_unqualified_reaches(&self, migration: usize) -> bool {
        !self.shadow_unqualified_elsewhere.contains(&migration)
    }

    /// True if migration `migration`'s backfill has not finished.
    pub fn backfill_pending(&self, migration: usize) -> bool {
        self.backfill_pending.contains(&migration)
    }

    /// What makes migration `migration`'s schema unsafe for its writes, if anything.
    pub fn unsafe_schema(&self, migration: usize) -> Option<&str> {
        self.unsafe_schema.iter().find(|u| u.migration == migration).map(|u| u.finding.as_str())
    }

    pub(crate) fn get(&self, migration: usize) -> MigrationRoute {
        self.per_migration.get(migration).copied().unwrap_or(MigrationRoute {
            phase: Phase::Off,
            version: Side::Old,
            read_source: Side::Old,
        })
    }
}
