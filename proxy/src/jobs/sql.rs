//! Statement builders for backfill, verify and repair. Every variable part is an AST node of the compiled
//! mapping (quoted `Ident`s and `ObjectName`s, parsed mapping `Expr`s, `DataType`s, string `Value`s) rendered
//! through sqlparser's `Display`; the fixed skeletons around them are then parsed back into a `Statement`
//! and the statement's own `Display` is what gets sent, so a rule can never change a statement's shape.
//!
//! Key values travel as jsonb text (`{"id": 5}`) and are turned back into typed values with
//! `jsonb_populate_record(NULL::<table>, $n::text::jsonb)`, which keeps the builders type-agnostic and
//! still lets the planner use the primary key index for the row comparison.
//!
//! A split (several shadow tables) is read as its targets FULL JOINed on the key, each target filtered by
//! the statement's key predicate before the join (so the key index still serves each), which shows a row
//! missing from one target as a divergent row; it is written target by target, in data-modifying CTEs of
//! the one statement.

use std::fmt::Display;

use sqlparser::ast::{Ident, ObjectName, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::mapping::CompiledMapping;

/// One of the two tables: the one a per-side statement reads, or the one a repair writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The old table, mapped forward into the shadow's columns and types.
    Old,
    Shadow,
}

/// Which ends of a key range `(lower, upper]` are bounded; bounds are parameters `$1` (lower) then upper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub lower: bool,
    pub upper: bool,
}

fn list<T: Display>(items: impl IntoIterator<Item = T>) -> String {
    joined(items, ", ")
}

fn joined<T: Display>(items: impl IntoIterator<Item = T>, separator: &str) -> String {
    items.into_iter().map(|item| item.to_string()).collect::<Vec<_>>().join(separator)
}

fn ident(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// Parses the composed text and renders it from the AST: the single source of what is executed.
fn statement(text: String) -> String {
    let dialect = PostgreSqlDialect {};
    match Parser::parse_sql(&dialect, &text) {
        Ok(statements) if statements.len() == 1 => statements[0].to_string(),
        // Unreachable for the skeletons here (unit tests parse every variant); sending the composed text
        // lets Postgres report a precise error instead of the proxy panicking.
        other => {
            tracing::error!(?other, sql = %text, "generated job statement did not parse as one statement");
            text
        }
    }
}

impl CompiledMapping {
    fn key_list(&self, qualifier: Option<&Ident>) -> String {
        list(self.key.iter().map(|k| match qualifier {
            Some(q) => format!("{q}.{k}"),
            None => k.to_string(),
        }))
    }

    fn key_row(&self, qualifier: Option<&Ident>) -> String {
        format!("ROW({})", self.key_list(qualifier))
    }

    /// `ROW((SELECT k1 FROM jsonb_populate_record(NULL::t, $n::text::jsonb)), ...)`: the typed key held in
    /// parameter n, as scalar subqueries so it is computed once per statement (an InitPlan), never per row.
    fn bound_row(&self, table: &ObjectName, param: usize) -> String {
        let record = format!("jsonb_populate_record(NULL::{table}, ${param}::text::jsonb)");
        format!("ROW({})", list(self.key.iter().map(|k| format!("(SELECT {k} FROM {record})"))))
    }

    /// `jsonb_build_object('k1', q.k1, ...)::text`: a key as the jsonb text stored in the state tables.
    fn key_json(&self, qualifier: Option<&Ident>) -> String {
        let pairs = self.key.iter().map(|k| {
            let label = Value::SingleQuotedString(k.value.clone());
            match qualifier {
                Some(q) => format!("{label}, {q}.{k}"),
                None => format!("{label}, {k}"),
            }
        });
        format!("jsonb_build_object({})::text", list(pairs))
    }

    fn table(&self, side: Side) -> &ObjectName {
        match side {
            Side::Old => &self.old,
            Side::Shadow => &self.shadow,
        }
    }

    /// The shadow side's rows as a FROM item named `alias`, restricted to `predicate` (over key columns):
    /// the shadow itself (the caller applies the predicate), or a split's targets, each filtered by the
    /// predicate, FULL JOINed on the key and presenting the whole new shape.
    fn shadow_from(&self, predicate: &str, alias: &Ident) -> String {
        if !self.is_split() {
            return format!("{} AS {alias}", self.shadow);
        }
        let keys = self.key_list(None);
        let mut from = String::new();
        for (i, (table, _)) in self.targets.iter().enumerate() {
            let part = format!("(SELECT * FROM {table} WHERE {predicate}) AS {}", ident(&format!("__dw_t{}", i + 1)));
            from = if i == 0 { part } else { format!("{from} FULL JOIN {part} USING ({keys})") };
        }
        format!("(SELECT {} FROM {from}) AS {alias}", list(&self.shadow_columns))
    }

    /// The old side's rows as a FROM item named `alias`, restricted to `predicate` (over key columns): the
    /// old table itself (the caller applies the predicate), or a merge's sources, each filtered by the
    /// predicate, FULL JOINed on the key and presenting every old column (a key one source lacks shows as
    /// that source's columns NULL, as the merged shadow row holds it).
    fn old_from(&self, predicate: &str, alias: &Ident) -> String {
        if !self.is_merge() {
            return format!("{} AS {alias}", self.old);
        }
        let keys = self.key_list(None);
        let mut from = String::new();
        for (i, (table, columns, _)) in self.sources.iter().enumerate() {
            let part = format!(
                "(SELECT {} FROM {table} WHERE {predicate}) AS {}",
                list(columns),
                ident(&format!("__dw_o{}", i + 1))
            );
            from = if i == 0 { part } else { format!("{from} FULL JOIN {part} USING ({keys})") };
        }
        format!("(SELECT {} FROM {from}) AS {alias}", list(&self.old_columns))
    }

    /// The columns a target holds and their forward expressions.
    fn target_columns(&self, indexes: &[usize]) -> (Vec<&Ident>, Vec<&sqlparser::ast::Expr>) {
        (
            indexes.iter().map(|&i| &self.shadow_columns[i]).collect(),
            indexes.iter().map(|&i| &self.forward[i]).collect(),
        )
    }

    /// The targets but the first as data-modifying CTEs `__dw_w2 AS (<write(table, indexes)>), ...` and the
    /// first one's statement: a write of every shadow table in one statement, whose row count is the first's.
    fn every_target(&self, ctes: &[String], write: impl Fn(&ObjectName, &[usize]) -> String) -> String {
        let mut with: Vec<String> = ctes.to_vec();
        for (i, (table, indexes)) in self.targets.iter().enumerate().skip(1) {
            with.push(format!("{} AS ({})", ident(&format!("__dw_w{}", i + 1)), write(table, indexes)));
        }
        let (first, indexes) = &self.targets[0];
        let main = write(first, indexes);
        if with.is_empty() {
            main
        } else {
            format!("WITH {} {main}", list(with))
        }
    }

    fn range_predicate(&self, side: Side, bounds: Bounds) -> String {
        let table = self.table(side);
        let mut terms = vec!["true".to_string()];
        if bounds.lower {
            terms.push(format!("{} > {}", self.key_row(None), self.bound_row(table, 1)));
        }
        if bounds.upper {
            let param = if bounds.lower { 2 } else { 1 };
            terms.push(format!("{} <= {}", self.key_row(None), self.bound_row(table, param)));
        }
        terms.join(" AND ")
    }

    /// `ROW(keys) IN (...)` the keys held in `$1` as a jsonb array of key objects (`[{"id": 5}]`).
    fn keys_predicate(&self, side: Side) -> String {
        format!(
            "{} IN (SELECT {} FROM jsonb_populate_recordset(NULL::{}, $1::text::jsonb))",
            self.key_row(None),
            self.key_list(None),
            self.table(side)
        )
    }

    /// The rows of one side matching `predicate`, in the shadow's column names and types.
    fn side_rows(&self, side: Side, predicate: &str) -> String {
        match side {
            Side::Old => {
                let columns = self
                    .forward
                    .iter()
                    .zip(&self.shadow_types)
                    .zip(&self.shadow_columns)
                    .map(|((expr, data_type), column)| format!("CAST({expr} AS {data_type}) AS {column}"));
                format!("SELECT {} FROM {} WHERE {predicate}", list(columns), self.old_from(predicate, &self.old_alias))
            }
            Side::Shadow => {
                let from = self.shadow_from(predicate, &ident("__dw_r"));
                format!("SELECT {} FROM {from} WHERE {predicate}", list(&self.shadow_columns))
            }
        }
    }

    /// One backfill batch: inserts the old rows of the key range `(lower, upper]` mapped into the shadow,
    /// skipping keys the shadow already holds in the statement's snapshot (a range-scoped merge anti-join,
    /// so a plain INSERT without speculative insertion). A key a concurrent dual write inserts after that
    /// snapshot makes it fail with unique_violation; the batch is then redone `with_on_conflict`
    /// (`ON CONFLICT DO NOTHING`), which waits for and skips such keys. Why no old row needs a lock: see
    /// `backfill`. The row count is the number of rows inserted.
    /// A split writes every target from one set of mapped rows (a CTE `__dw_rows` in the new shape); the
    /// row count is the first target's.
    pub fn backfill_batch(&self, bounds: Bounds, with_on_conflict: bool) -> String {
        let s = ident("__dw_s");
        let join = joined(self.key.iter().map(|key| format!("{s}.{key} = {}.{key}", self.old_alias)), " AND ");
        let on_conflict =
            if with_on_conflict { format!("ON CONFLICT ({}) DO NOTHING", self.key_list(None)) } else { String::new() };
        let shadow_range = self.range_predicate(Side::Shadow, bounds);
        let old_range = self.range_predicate(Side::Old, bounds);
        let source = format!(
            "FROM {old} WHERE {old_range} \
             AND NOT EXISTS (SELECT 1 FROM {shadow} WHERE {join} AND {shadow_range})",
            old = self.old_from(&old_range, &self.old_alias),
            shadow = self.shadow_from(&shadow_range, &s),
        );
        if !self.is_split() {
            return statement(format!(
                "INSERT INTO {shadow} ({columns}) SELECT {exprs} {source} {on_conflict}",
                shadow = self.shadow,
                columns = list(&self.shadow_columns),
                exprs = list(&self.forward),
            ));
        }
        let rows = ident("__dw_rows");
        let mapped = self.forward.iter().zip(&self.shadow_columns).map(|(e, c)| format!("{e} AS {c}"));
        let rows_cte = format!("{rows} AS MATERIALIZED (SELECT {} {source})", list(mapped));
        statement(self.every_target(&[rows_cte], |table, indexes| {
            let (columns, _) = self.target_columns(indexes);
            format!("INSERT INTO {table} ({0}) SELECT {0} FROM {rows} {on_conflict}", list(columns))
        }))
    }

    /// (count, last key as jsonb text) of the old rows after key `$1` (or all of them): the exact remaining
    /// work when a backfill (re)starts, and the last batch.
    pub fn old_after(&self, has_lower: bool) -> String {
        let bounds = Bounds { lower: has_lower, upper: false };
        let predicate = self.range_predicate(Side::Old, bounds);
        let descending = list(self.key.iter().map(|k| format!("{k} DESC")));
        statement(format!(
            "SELECT count(*), (SELECT {last} FROM {old} WHERE {predicate} ORDER BY {descending} LIMIT 1) \
             FROM {old} WHERE {predicate}",
            last = self.key_json(None),
            old = self.old_from(&predicate, &ident("__dw_r")),
        ))
    }

    /// The key `$1` rows after key `$2` (or from the start) on one side: a chunk boundary.
    pub fn boundary(&self, side: Side, has_lower: bool) -> String {
        let after = if has_lower {
            format!("{} > {}", self.key_row(None), self.bound_row(self.table(side), 2))
        } else {
            "true".to_string()
        };
        let from = match side {
            Side::Old => self.old_from(&after, &ident("__dw_r")),
            Side::Shadow => self.shadow_from(&after, &ident("__dw_r")),
        };
        statement(format!(
            "SELECT {} FROM {from} WHERE {after} ORDER BY {} OFFSET $1 LIMIT 1",
            self.key_json(None),
            self.key_list(None)
        ))
    }

    /// (row count, xor of 64-bit row-text hashes) of one side in a key range. Keys are unique, so the xor
    /// cannot cancel, and it is invertible: a parent's sum minus one half gives the other half.
    pub fn checksum(&self, side: Side, bounds: Bounds) -> String {
        let m = ident("__dw_m");
        statement(format!(
            "SELECT count(*), coalesce(bit_xor(hashtextextended({m}::text, 0)), 0) FROM ({}) AS {m}",
            self.side_rows(side, &self.range_predicate(side, bounds))
        ))
    }

    /// Row-level comparison of a (small) key range: (kind, key, old mapped row, shadow row) per divergent
    /// key, the rows as jsonb text.
    pub fn leaf_diff(&self, bounds: Bounds) -> String {
        self.diff(&self.range_predicate(Side::Old, bounds), &self.range_predicate(Side::Shadow, bounds))
    }

    /// The same comparison for the keys in `$1` (a jsonb array of key objects): which of them differ now.
    pub fn keys_diff(&self) -> String {
        self.diff(&self.keys_predicate(Side::Old), &self.keys_predicate(Side::Shadow))
    }

    /// The keys in `$1` (a jsonb array of key objects, values in any form their type's input accepts) as
    /// the jsonb text `keys_diff` and `leaf_diff` report them, in input order.
    pub fn canonical_keys(&self) -> String {
        let k = ident("__dw_k");
        statement(format!(
            "SELECT {} FROM jsonb_populate_recordset(NULL::{}, $1::text::jsonb) WITH ORDINALITY AS {k} \
             ORDER BY {k}.ordinality",
            self.key_json(Some(&k)),
            self.shadow
        ))
    }

    fn diff(&self, old_predicate: &str, shadow_predicate: &str) -> String {
        let (o, s, m) = (ident("__dw_o"), ident("__dw_s"), ident("__dw_m"));
        let (k, j, t) = (ident("__dw_k"), ident("__dw_j"), ident("__dw_t"));
        let side = |rows: String| {
            format!(
                "SELECT {key} AS {k}, to_jsonb({m})::text AS {j}, {m}::text AS {t}, {keys} FROM ({rows}) AS {m}",
                key = self.key_json(Some(&m)),
                keys = self.key_list(Some(&m)),
            )
        };
        let join = joined(self.key.iter().map(|key| format!("{o}.{key} = {s}.{key}")), " AND ");
        statement(format!(
            "SELECT CASE WHEN {o}.{k} IS NULL THEN 'extra' WHEN {s}.{k} IS NULL THEN 'missing' ELSE 'different' END, \
                    coalesce({o}.{k}, {s}.{k}), {o}.{j}, {s}.{j} \
             FROM ({old}) AS {o} FULL JOIN ({shadow}) AS {s} ON {join} \
             WHERE {o}.{t} IS DISTINCT FROM {s}.{t}",
            old = side(self.side_rows(Side::Old, old_predicate)),
            shadow = side(self.side_rows(Side::Shadow, shadow_predicate)),
        ))
    }

    /// Deletes shadow rows in a key range whose old row is gone (both sides range-scoped, so a merge
    /// anti-join over the range only). A dual-write DELETE finds the shadow row with its statement's
    /// snapshot, so it misses a row a backfill batch committed after that snapshot was taken; this sweep,
    /// run once every transaction open at the batch's commit has ended (see `sweep`), removes what it
    /// missed. Run under REPEATABLE READ (see `repair`).
    pub fn sweep(&self, bounds: Bounds) -> String {
        if self.is_merge() {
            return self.sweep_merge(bounds);
        }
        let (o, s) = (ident("__dw_o"), ident("__dw_s"));
        let join = joined(self.key.iter().map(|key| format!("{o}.{key} = {s}.{key}")), " AND ");
        statement(self.every_target(&[], |table, _| {
            format!(
                "DELETE FROM {table} AS {s} WHERE {range} \
                 AND NOT EXISTS (SELECT 1 FROM {old} AS {o} WHERE {join} AND {old_range})",
                old = self.old,
                range = self.range_predicate(Side::Shadow, bounds),
                old_range = self.range_predicate(Side::Old, bounds),
            )
        }))
    }

    /// Rewrites the rows of the keys in `$1` (a jsonb array of key objects) in the table that is `behind`,
    /// from the other one through the mapping that produces it (forward into the shadow, backward into the
    /// old table): upserts the mapped row where the source row exists, deletes the row where it does not.
    /// The source rows are read `FOR SHARE` and never written. Run under REPEATABLE READ so a concurrent dual
    /// write to any of these rows makes it fail and retry rather than act on a stale view. Returns (rows
    /// upserted, rows deleted).
    pub fn repair(&self, behind: Side) -> String {
        if self.is_split() {
            return self.repair_split(behind);
        }
        if self.is_merge() {
            return match behind {
                Side::Shadow => self.repair_merge(),
                Side::Old => self.repair_merge_sources(),
            };
        }
        let (source, target, columns, exprs, alias) = match behind {
            Side::Shadow => (&self.old, &self.shadow, &self.shadow_columns, &self.forward, &self.old_alias),
            Side::Old => (&self.shadow, &self.old, &self.old_columns, &self.backward, &self.shadow_alias),
        };
        let (keys_cte, src, up, del) = (ident("__dw_keys"), ident("__dw_src"), ident("__dw_up"), ident("__dw_del"));
        let (o, s) = (ident("__dw_o"), ident("__dw_s"));
        let non_key: Vec<&Ident> = columns.iter().filter(|c| !self.key.contains(c)).collect();
        let on_conflict = if non_key.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", list(non_key.iter().map(|c| format!("{c} = EXCLUDED.{c}"))))
        };
        let join = joined(self.key.iter().map(|key| format!("{o}.{key} = {s}.{key}")), " AND ");
        statement(format!(
            "WITH {keys_cte} AS (SELECT {keys} FROM jsonb_populate_recordset(NULL::{source}, $1::text::jsonb)), \
             {src} AS MATERIALIZED (SELECT * FROM {source} WHERE {key_row} IN (SELECT {keys} FROM {keys_cte}) FOR SHARE), \
             {up} AS (INSERT INTO {target} ({columns}) SELECT {exprs} FROM {src} AS {alias} \
                      ON CONFLICT ({keys}) {on_conflict} RETURNING 1), \
             {del} AS (DELETE FROM {target} AS {s} WHERE {s_key_row} IN (SELECT {keys} FROM {keys_cte}) \
                       AND NOT EXISTS (SELECT 1 FROM {source} AS {o} WHERE {join}) RETURNING 1) \
             SELECT (SELECT count(*) FROM {up}), (SELECT count(*) FROM {del})",
            keys = self.key_list(None),
            key_row = self.key_row(None),
            s_key_row = self.key_row(Some(&s)),
            columns = list(columns),
            exprs = list(exprs),
        ))
    }

    /// `repair` of a split. Behind the old table: every target is upserted from the old rows (or its row
    /// deleted where the old row is gone). Old table behind: its row is rebuilt from the targets joined on
    /// the key (read `FOR SHARE`) and deleted only where no target holds the key any more, so a key only
    /// some targets hold is left as it is (and stays divergent) rather than guessed. Returns (rows
    /// upserted, rows deleted), counted per key (the most any one table saw).
    fn repair_split(&self, behind: Side) -> String {
        let (keys_cte, src) = (ident("__dw_keys"), ident("__dw_src"));
        let (o, s) = (ident("__dw_o"), ident("__dw_s"));
        let keys = self.key_list(None);
        let in_keys = format!("{} IN (SELECT {keys} FROM {keys_cte})", self.key_row(None));
        let s_in_keys = format!("{} IN (SELECT {keys} FROM {keys_cte})", self.key_row(Some(&s)));
        let join = joined(self.key.iter().map(|key| format!("{o}.{key} = {s}.{key}")), " AND ");
        let on_conflict = |columns: &[&Ident]| {
            let non_key: Vec<&&Ident> = columns.iter().filter(|c| !self.key.contains(c)).collect();
            if non_key.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", list(non_key.iter().map(|c| format!("{c} = EXCLUDED.{c}"))))
            }
        };
        let gone_from = |table: &ObjectName| format!("NOT EXISTS (SELECT 1 FROM {table} AS {o} WHERE {join})");
        let (source_record, source_rows, writes) = match behind {
            Side::Shadow => {
                let src_rows = format!("SELECT * FROM {} WHERE {in_keys} FOR SHARE", self.old);
                let mut writes = Vec::new();
                for (table, indexes) in &self.targets {
                    let (columns, exprs) = self.target_columns(indexes);
                    writes.push((
                        format!(
                            "INSERT INTO {table} ({}) SELECT {} FROM {src} AS {} ON CONFLICT ({keys}) {} RETURNING 1",
                            list(&columns),
                            list(&exprs),
                            self.old_alias,
                            on_conflict(&columns)
                        ),
                        format!(
                            "DELETE FROM {table} AS {s} WHERE {s_in_keys} AND {} RETURNING 1",
                            gone_from(&self.old)
                        ),
                    ));
                }
                (&self.old, src_rows, writes)
            }
            Side::Old => {
                let from = self
                    .targets
                    .iter()
                    .skip(1)
                    .fold(self.targets[0].0.to_string(), |acc, (t, _)| format!("{acc} JOIN {t} USING ({keys})"));
                let src_rows = format!("SELECT * FROM {from} WHERE {in_keys} FOR SHARE");
                let columns: Vec<&Ident> = self.old_columns.iter().collect();
                let gone = joined(self.targets.iter().map(|(t, _)| gone_from(t)), " AND ");
                let writes = vec![(
                    format!(
                        "INSERT INTO {} ({}) SELECT {} FROM {src} AS {} ON CONFLICT ({keys}) {} RETURNING 1",
                        self.old,
                        list(&columns),
                        list(&self.backward),
                        self.shadow_alias,
                        on_conflict(&columns)
                    ),
                    format!("DELETE FROM {} AS {s} WHERE {s_in_keys} AND {gone} RETURNING 1", self.old),
                )];
                (&self.shadow, src_rows, writes)
            }
        };
        let mut ctes = vec![
            format!(
                "{keys_cte} AS (SELECT {keys} FROM jsonb_populate_recordset(NULL::{source_record}, $1::text::jsonb))"
            ),
            format!("{src} AS MATERIALIZED ({source_rows})"),
        ];
        let (mut ups, mut dels) = (Vec::new(), Vec::new());
        for (i, (up, del)) in writes.into_iter().enumerate() {
            let (u, d) = (ident(&format!("__dw_up{}", i + 1)), ident(&format!("__dw_del{}", i + 1)));
            ctes.push(format!("{u} AS ({up})"));
            ctes.push(format!("{d} AS ({del})"));
            ups.push(format!("(SELECT count(*) FROM {u})"));
            dels.push(format!("(SELECT count(*) FROM {d})"));
        }
        statement(format!("WITH {} SELECT GREATEST({}), GREATEST({})", list(ctes), list(ups), list(dels)))
    }

    /// `sweep` of a merge: in the key range, deletes the shadow rows no source holds, and nulls the
    /// columns of each source that no longer holds a key another source still holds (a dual-write DELETE
    /// that missed a row a backfill batch committed after its snapshot left them as the batch copied them).
    /// Both in one UPDATE/DELETE pair on disjoint rows (a row is deleted only when no source holds it).
    fn sweep_merge(&self, bounds: Bounds) -> String {
        let (o, s) = (ident("__dw_o"), ident("__dw_s"));
        let range = self.range_predicate(Side::Shadow, bounds);
        let holds = |table: &ObjectName| {
            let join = joined(self.key.iter().map(|key| format!("{o}.{key} = {s}.{key}")), " AND ");
            format!("EXISTS (SELECT 1 FROM {table} AS {o} WHERE {join})")
        };
        let any = joined(self.sources.iter().map(|(t, _, _)| holds(t)), " OR ");
        let mut sets = Vec::new();
        let mut gone = Vec::new();
        for (table, _, writes) in &self.sources {
            let own: Vec<&Ident> =
                writes.iter().map(|&i| &self.shadow_columns[i]).filter(|c| !self.key.contains(c)).collect();
            for c in &own {
                sets.push(format!("{c} = CASE WHEN {} THEN {s}.{c} ELSE NULL END", holds(table)));
            }
            gone.push(format!(
                "(NOT {} AND ({}))",
                holds(table),
                joined(own.iter().map(|c| format!("{s}.{c} IS NOT NULL")), " OR ")
            ));
        }
        let del = ident("__dw_del");
        statement(format!(
            "WITH {del} AS (DELETE FROM {shadow} AS {s} WHERE {range} AND NOT ({any}) RETURNING 1) \
             UPDATE {shadow} AS {s} SET {sets} WHERE {range} AND ({any}) AND ({gone})",
            shadow = self.shadow,
            sets = list(sets),
            gone = joined(gone, " OR "),
        ))
    }

    /// `repair` of a merge while its sources are the source of truth (`dual_write`; in cutover see
    /// `merge_repair`): the shadow rows of the keys in `$1` are upserted from the sources FULL JOINed on the key, or deleted where
    /// no source holds the key. Each source's rows are read `FOR SHARE` (a FULL JOIN cannot be locked as one;
    /// under REPEATABLE READ a concurrent write to any of them fails the repair, which is retried). Returns
    /// (rows upserted, rows deleted).
    fn repair_merge(&self) -> String {
        let (keys_cte, src, up, del) = (ident("__dw_keys"), ident("__dw_src"), ident("__dw_up"), ident("__dw_del"));
        let (o, s) = (ident("__dw_o"), ident("__dw_s"));
        let keys = self.key_list(None);
        let in_keys = format!("{} IN (SELECT {keys} FROM {keys_cte})", self.key_row(None));
        let mut ctes = vec![format!(
            "{keys_cte} AS (SELECT {keys} FROM jsonb_populate_recordset(NULL::{}, $1::text::jsonb))",
            self.shadow
        )];
        let mut locks = Vec::new();
        for (i, (table, _, _)) in self.sources.iter().enumerate() {
            let lock = ident(&format!("__dw_lock{}", i + 1));
            ctes.push(format!("{lock} AS (SELECT 1 FROM {table} WHERE {in_keys} FOR SHARE)"));
            locks.push(format!("(SELECT count(*) FROM {lock})"));
        }
        let non_key: Vec<&Ident> = self.shadow_columns.iter().filter(|c| !self.key.contains(c)).collect();
        let on_conflict = if non_key.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", list(non_key.iter().map(|c| format!("{c} = EXCLUDED.{c}"))))
        };
        let join = joined(self.key.iter().map(|key| format!("{o}.{key} = {s}.{key}")), " AND ");
        ctes.push(format!(
            "{src} AS MATERIALIZED (SELECT * FROM {} WHERE {in_keys})",
            self.old_from(&in_keys, &ident("__dw_r"))
        ));
        ctes.push(format!(
            "{up} AS (INSERT INTO {shadow} ({columns}) SELECT {exprs} FROM {src} AS {alias} ON CONFLICT ({keys}) \
             {on_conflict} RETURNING 1)",
            shadow = self.shadow,
            columns = list(&self.shadow_columns),
            exprs = list(&self.forward),
            alias = self.old_alias,
        ));
        let s_in_keys = format!("{} IN (SELECT {keys} FROM {keys_cte})", self.key_row(Some(&s)));
        ctes.push(format!(
            "{del} AS (DELETE FROM {shadow} AS {s} WHERE {s_in_keys} AND NOT EXISTS (SELECT 1 FROM {src} AS {o} \
             WHERE {join}) RETURNING 1)",
            shadow = self.shadow,
        ));
        // The locks are taken when the SELECT reads their counts (a SELECT CTE runs only if referenced).
        statement(format!(
            "WITH {} SELECT (SELECT count(*) FROM {up}) + 0 * ({}), (SELECT count(*) FROM {del})",
            list(ctes),
            joined(locks, " + ")
        ))
    }
}

mod merge_repair;
mod merge_truncate;
#[cfg(test)]
mod tests;
