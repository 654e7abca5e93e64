//! The rules model: migrations read from a TOML rules file (README: Rules files), validated so that every error
//! names the file, the migration and the field at fault. Pure data; the rewriter compiles it separately.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use sqlparser::ast::{Expr, Visit, Visitor as AstVisitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::merge::{self, MergeOf, MergeSource};
use crate::names::{normalize_ident, TableName};
use crate::split::{self, SplitOf, SplitTarget};
use crate::unseen_writers::check_unseen_writer_id;
pub use crate::unseen_writers::UNSEEN_WRITER_KINDS;

/// All migrations of one rules file, in file order. Indexes into `migrations` are the migration ids used by
/// [`crate::Route`] and [`crate::Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub migrations: Vec<Migration>,
}

/// One table under migration: the old table (version `versions.old`), its shadow (version `versions.new`)
/// and the column mappings between their shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub name: String,
    /// The database holding both tables, exactly as clients name it in their startup packet; `None`: the
    /// database of the proxy's upstream URL (the proxy resolves it). Sessions on other databases never see
    /// this migration.
    pub database: Option<String>,
    /// The old table; its name is also the logical name that sessions of both versions write. For a
    /// merge, the first source's table (see `merge`).
    pub table: TableName,
    /// The shadow table; for a split, the first target's table (see `split`).
    pub shadow: TableName,
    /// Key columns, named the same in both tables.
    pub key: Vec<String>,
    pub versions: Versions,
    /// Shadow column -> SQL expression over old columns, in file order (which should be the shadow's column
    /// order: a v2 session's `SELECT *` on a derived table lists columns in this order). For a split, the
    /// whole new shape: the targets' mappings, key first (`split::merged_forward`).
    pub forward: Vec<(String, String)>,
    /// The shadow tables of a split (`[[migration.targets]]`), at least two; empty for one `shadow`.
    pub split: Vec<SplitTarget>,
    /// The old tables of a merge (`[[migration.sources]]`), at least two; empty for one `table`. `table` is
    /// then the first source's, `forward` and `backward` the sources' mappings, key first.
    pub merge: Vec<MergeSource>,
    /// Old column -> SQL expression over shadow columns, in file order (the old table's column order).
    pub backward: Vec<(String, String)>,
    /// The phase a migration starts in when the proxy first sees it: `dual_write` unless the file says `off`.
    pub initial_phase: Phase,
    /// The fraction of eligible reads the proxy also runs in both shapes and compares (shadow reads).
    pub shadow_read_sample: SampleRate,
    /// Writers of the old table the proxy cannot see (cascading foreign keys, triggers, functions, views,
    /// rules) that this migration accepts, by identifier (`fk:orders_user_id_fkey`; see
    /// [`UNSEEN_WRITER_KINDS`]). Registration refuses a migration with any other.
    pub accept_unseen_writers: Vec<String>,
    /// BEFORE row triggers of the migration's tables whose body may assign the key that this migration
    /// accepts, as `<schema>.<table>.<trigger>` (the check cannot tell a harmless assignment from one that
    /// sends the dual write's upsert to another row). Registration refuses a migration with any other.
    pub accept_key_triggers: Vec<String>,
    /// What the change-data-capture watch does with a write that reached one table without its twin.
    pub on_bypass: OnBypass,
}

/// `on_bypass` of a migration: a bypassing write is always counted, logged and recorded; `repair` also
/// rewrites that key from the phase's source of truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBypass {
    #[default]
    Alert,
    Repair,
}

/// A sampling fraction in 0..=1, kept in parts per million so that rules stay `Eq` and `Hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SampleRate(u32);

impl SampleRate {
    pub const ZERO: SampleRate = SampleRate(0);
    pub const ALL: SampleRate = SampleRate(1_000_000);

    /// The rate for `fraction`, which must be a number in 0..=1 (rounded to millionths).
    pub fn from_fraction(fraction: f64) -> Result<SampleRate, String> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!("must be a number from 0 to 1, not {fraction}"));
        }
        Ok(SampleRate((fraction * 1_000_000.0).round() as u32))
    }

    pub fn as_fraction(self) -> f64 {
        f64::from(self.0) / 1_000_000.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_fraction())
    }
}

impl Migration {
    /// The shadow's column names, in mapping order.
    pub fn shadow_columns(&self) -> impl Iterator<Item = &str> {
        self.forward.iter().map(|(c, _)| c.as_str())
    }

    /// The old table's column names, in mapping order.
    pub fn old_columns(&self) -> impl Iterator<Item = &str> {
        self.backward.iter().map(|(c, _)| c.as_str())
    }
}

/// The names of the two versions (shapes) of a migration, e.g. `v1` and `v2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    pub old: String,
    pub new: String,
}

/// Where a migration is in its life (README: What each phase does). Stored by the proxy, changed by control commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// The proxy leaves the table alone: statements pass through untouched.
    Off,
    /// The old table is the primary; every write also lands in the shadow.
    DualWrite,
    /// The shadow is the primary; the old table is still kept in sync through the backward mapping.
    Cutover,
    /// Only the shadow is written; the old table is retired.
    Complete,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Off, Phase::DualWrite, Phase::Cutover, Phase::Complete];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Off => "off",
            Phase::DualWrite => "dual_write",
            Phase::Cutover => "cutover",
            Phase::Complete => "complete",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Phase, String> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown phase `{s}` (expected off, dual_write, cutover or complete)"))
    }
}

/// A rules file that cannot be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{}{message}",
    migration.as_ref().map(|m| format!("migration `{m}`: ")).unwrap_or_default(),
    field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct RulesError {
    /// The file (or other source) the rules came from.
    pub origin: String,
    pub migration: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl RuleSet {
    /// Checks rules built in code (or after edits) against each other: unique names (across databases), no
    /// table in two migrations of the same database, and each migration valid on its own. Migrations
    /// without a `database` are compared only with each other: resolve the default before checking them
    /// against migrations that name one.
    pub fn new(migrations: Vec<Migration>, origin: &str) -> Result<RuleSet, RulesError> {
        let err = |m: &Migration, field: &str, message: String| RulesError {
            origin: origin.to_string(),
            migration: Some(m.name.clone()),
            field: Some(field.to_string()),
            message,
        };
        let mut names = HashSet::new();
        for (i, m) in migrations.iter().enumerate() {
            m.check(origin)?;
            if !names.insert(m.name.as_str()) {
                return Err(err(m, "name", "another migration has the same name".into()));
            }
            for other in migrations[..i].iter().filter(|o| o.database == m.database) {
                let mine_all = m
                    .old_tables()
                    .into_iter()
                    .map(|t| ("table", t))
                    .chain(m.shadow_tables().into_iter().map(|t| ("shadow", t)));
                for (field, mine) in mine_all {
                    for theirs in other.old_tables().into_iter().chain(other.shadow_tables()) {
                        if tables_may_clash(mine, theirs) {
                            return Err(err(
                                m,
                                field,
                                format!("`{mine}` is already used by migration `{}`", other.name),
                            ));
                        }
                    }
                }
            }
        }
        if migrations.is_empty() {
            return Err(RulesError {
                origin: origin.to_string(),
                migration: None,
                field: Some("migration".into()),
                message: "the file defines no [[migration]]".into(),
            });
        }
        Ok(RuleSet { migrations })
    }

    /// The migration with this name and its index.
    pub fn find(&self, name: &str) -> Option<(usize, &Migration)> {
        self.migrations.iter().enumerate().find(|(_, m)| m.name == name)
    }
}

fn tables_may_clash(a: &TableName, b: &TableName) -> bool {
    a.qualified() == b.qualified()
}

impl Migration {
    /// Validates one migration on its own: names, key, and that every mapping expression parses and only
    /// refers to columns of the table it maps from.
    pub fn check(&self, origin: &str) -> Result<(), RulesError> {
        let err = |field: &str, message: String| RulesError {
            origin: origin.to_string(),
            migration: Some(self.name.clone()),
            field: Some(field.to_string()),
            message,
        };
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(err("name", "must be non-empty letters, digits, `_` or `-`".into()));
        }
        if let Some(database) = &self.database {
            if database.is_empty() || database.contains('\0') {
                return Err(err("database", "must be a database name (non-empty, no NUL)".into()));
            }
        }
        if tables_may_clash(&self.table, &self.shadow) {
            return Err(err("shadow", "must differ from `table`".into()));
        }
        if self.is_split() {
            let parts = SplitOf {
                table: &self.table,
                key: &self.key,
                shadow: &self.shadow,
                forward: &self.forward,
                split: &self.split,
            };
            split::check(parts).map_err(|(field, message)| err(&field, message))?;
        }
        if self.is_merge() {
            if self.is_split() {
                return Err(err("targets", "a migration cannot both merge and split tables".into()));
            }
            let parts = MergeOf {
                table: &self.table,
                shadow: &self.shadow,
                key: &self.key,
                forward: &self.forward,
                backward: &self.backward,
                sources: &self.merge,
            };
            merge::check(parts).map_err(|(field, message)| err(&field, message))?;
            // A dual write of one source sees only that source's row: its shadow columns come from it alone.
            for (i, source) in self.merge.iter().enumerate() {
                let own: HashSet<&str> = source.old_columns().collect();
                for (column, text) in &source.forward {
                    let field = format!("sources[{}].forward.{column}", i + 1);
                    let expr = parse_mapping_expr(text).map_err(|m| err(&field, m))?;
                    if let Some(used) = referenced_columns(&expr).into_iter().find(|u| !own.contains(u.as_str())) {
                        return Err(err(
                            &field,
                            format!("refers to `{used}`, which is not a column of this source (its backward's keys)"),
                        ));
                    }
                }
            }
        }
        if self.versions.old.is_empty() || self.versions.new.is_empty() {
            return Err(err("versions", "`old` and `new` must be non-empty".into()));
        }
        if self.versions.old == self.versions.new {
            return Err(err("versions", "`old` and `new` must differ".into()));
        }
        if self.forward.is_empty() {
            return Err(err("forward", "maps no column".into()));
        }
        if self.backward.is_empty() {
            return Err(err("backward", "maps no column (needed for cutover and rollback)".into()));
        }
        if self.key.is_empty() {
            return Err(err("key", "names no column".into()));
        }
        let mut seen = HashSet::new();
        for k in &self.key {
            if !seen.insert(k) {
                return Err(err("key", format!("column `{k}` is listed twice")));
            }
            for (side, map) in [("forward", &self.forward), ("backward", &self.backward)] {
                if !map.iter().any(|(c, _)| c == k) {
                    return Err(err(side, format!("must map key column `{k}`")));
                }
            }
        }
        let mut accepted = HashSet::new();
        for id in &self.accept_unseen_writers {
            check_unseen_writer_id(id).map_err(|m| err("accept_unseen_writers", m))?;
            if !accepted.insert(id) {
                return Err(err("accept_unseen_writers", format!("`{id}` is listed twice")));
            }
        }
        let mut accepted = HashSet::new();
        for id in &self.accept_key_triggers {
            let parts = id.split('.').count();
            if parts < 3 || id.trim() != id || id.starts_with('.') || id.ends_with('.') || id.contains("..") {
                return Err(err(
                    "accept_key_triggers",
                    format!("`{id}` is not a trigger: expected `<schema>.<table>.<trigger>`"),
                ));
            }
            if !accepted.insert(id) {
                return Err(err("accept_key_triggers", format!("`{id}` is listed twice")));
            }
        }
        let old_cols: HashSet<&str> = self.old_columns().collect();
        let new_cols: HashSet<&str> = self.shadow_columns().collect();
        for (side, map, from_cols, from_what) in [
            ("forward", &self.forward, &old_cols, "old-table columns (the keys of [migration.backward])"),
            ("backward", &self.backward, &new_cols, "shadow columns (the keys of [migration.forward])"),
        ] {
            let mut seen = HashSet::new();
            for (column, text) in map.iter() {
                let field = format!("{side}.{column}");
                if !seen.insert(column) {
                    return Err(err(&field, "column is mapped twice".into()));
                }
                let expr = parse_mapping_expr(text).map_err(|m| err(&field, m))?;
                for used in referenced_columns(&expr) {
                    if !from_cols.contains(used.as_str()) {
                        return Err(err(&field, format!("refers to `{used}`, which is not one of the {from_what}")));
                    }
                }
                if self.key.contains(column) && !carries_key(&expr, column) {
                    return Err(err(&field, key_not_carried(column, text)));
                }
            }
        }
        for (i, source) in self.merge.iter().enumerate() {
            for (side, map) in [("forward", &source.forward), ("backward", &source.backward)] {
                for (column, text) in map.iter().filter(|(c, _)| self.key.contains(c)) {
                    let field = format!("sources[{}].{side}.{column}", i + 1);
                    let expr = parse_mapping_expr(text).map_err(|m| err(&field, m))?;
                    if !carries_key(&expr, column) {
                        return Err(err(&field, key_not_carried(column, text)));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether a key column's mapping carries the key over as it is: the column of the same name, or a cast of
/// it (`id::bigint`, for a key whose type changes). The key is shared by both tables: every dual write, the
/// backfill, VERIFY and the change-data-capture watch match rows by its value, so a mapping that could give
/// two rows one key (`lower(email)`) would send one row's upsert onto the other's.
fn carries_key(expr: &Expr, column: &str) -> bool {
    match expr {
        Expr::Identifier(id) => normalize_ident(id) == column,
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => carries_key(inner, column),
        _ => false,
    }
}

fn key_not_carried(column: &str, text: &str) -> String {
    format!(
        "`{text}` maps key column `{column}` through an expression: the key is shared by both tables, and dual \
         writes, backfill and VERIFY match rows by its value, so it must be the column `{column}` itself (a cast \
         of it, such as `{column}::bigint`, is allowed); an expression could give two rows one key, and one \
         row's upsert would overwrite the other"
    )
}

/// Parses one mapping expression, requiring that nothing follows it.
pub(crate) fn parse_mapping_expr(text: &str) -> Result<Expr, String> {
    let dialect = PostgreSqlDialect {};
    let mut parser =
        Parser::new(&dialect).try_with_sql(text).map_err(|e| format!("`{text}` is not a SQL expression: {e}"))?;
    let expr = parser.parse_expr().map_err(|e| format!("`{text}` is not a SQL expression: {e}"))?;
    if parser.peek_token().token != Token::EOF {
        return Err(format!("`{text}` is not a single SQL expression: unexpected text after `{expr}`"));
    }
    Ok(expr)
}

/// Column names an expression reads: bare identifiers and the last part of qualified ones, skipping the
/// insides of subqueries (which read other relations).
pub(crate) fn referenced_columns(expr: &Expr) -> Vec<String> {
    struct Collect(Vec<String>, usize);
    impl AstVisitor for Collect {
        type Break = ();
        fn pre_visit_query(&mut self, _: &sqlparser::ast::Query) -> std::ops::ControlFlow<()> {
            self.1 += 1;
            std::ops::ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &sqlparser::ast::Query) -> std::ops::ControlFlow<()> {
            self.1 -= 1;
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &Expr) -> std::ops::ControlFlow<()> {
            if self.1 == 0 {
                match expr {
                    Expr::Identifier(id) => self.0.push(normalize_ident(id)),
                    Expr::CompoundIdentifier(ids) => {
                        if let Some(last) = ids.last() {
                            self.0.push(normalize_ident(last))
                        }
                    }
                    _ => {}
                }
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut c = Collect(Vec::new(), 0);
    let _ = expr.visit(&mut c);
    c.0.sort();
    c.0.dedup();
    c.0
}

/// One table the migration's new shape is stored in, with the new-shape columns it holds (key first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetRef<'a> {
    pub table: &'a TableName,
    /// `(column, expression over old columns)` of this table, in file order.
    pub forward: &'a [(String, String)],
}

impl Migration {
    /// True if the new shape is spread over several shadow tables.
    pub fn is_split(&self) -> bool {
        !self.split.is_empty()
    }

    /// The shadow tables and the columns each holds: one (`shadow`, all of `forward`) unless split.
    pub fn targets(&self) -> Vec<TargetRef<'_>> {
        if self.split.is_empty() {
            return vec![TargetRef { table: &self.shadow, forward: &self.forward }];
        }
        self.split.iter().map(|t| TargetRef { table: &t.table, forward: &t.forward }).collect()
    }

    /// True if several old tables are merged into the shadow.
    pub fn is_merge(&self) -> bool {
        !self.merge.is_empty()
    }

    /// Every old table (one unless merged), `table` first.
    pub fn old_tables(&self) -> Vec<&TableName> {
        if self.merge.is_empty() {
            return vec![&self.table];
        }
        self.merge.iter().map(|s| &s.table).collect()
    }

    /// Every shadow table (one unless split).
    pub fn shadow_tables(&self) -> Vec<&TableName> {
        self.targets().into_iter().map(|t| t.table).collect()
    }
}
