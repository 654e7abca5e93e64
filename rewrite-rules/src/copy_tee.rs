//! COPY FROM STDIN dual-written with COPY alone: the proxy keeps the client's rows and sends them twice,
//! into the session's table with the client's own COPY and into the other table with a second COPY, in
//! one transaction. Two COPYs cost about as much as two plain ones (COPY inserts in batches, which an
//! executor INSERT cannot), where the staging path of `copy` costs one staging COPY and two INSERTs.
//!
//! This only writes the same rows as the staging path's dual write where the other table's row is the
//! session's row column for column: every column the client sends feeds exactly one column of the other
//! table, as itself or a cast of itself (`balance = "abalance::bigint"`), and every other mapped column is
//! fed by a column the client does not send, as itself or a cast (both then hold NULL, which the catalog
//! check below makes sure of). What the rules say is judged here; what the catalog says is judged on the
//! server, in the same transaction, by a `DO` block that runs first ([`CopyTee::sql`]):
//!
//! - it locks both tables `ROW EXCLUSIVE` (the lock both COPYs take anyway): a trigger created or a type
//!   changed after the check waits for the transaction, so the check holds for both COPYs;
//! - no enabled BEFORE INSERT row trigger on the session's table or its partitions (it could change a
//!   row the second COPY sends unchanged, or skip it), no rule on it (an INSERT obeys rules, COPY does not),
//!   and row-level security on neither table (Postgres refuses COPY FROM under it, where the staging
//!   path's INSERTs obey the policies);
//! - each column pair of the same type and type modifier, or two integer types (`int2`, `int4`, `int8`:
//!   a text either type reads, both read as the same number, and one that only the wider reads fails the
//!   narrower COPY, which falls back to the staging path and its cast), and a cast's type the other
//!   column's type;
//! - each pair of columns the client does not send: no default, identity or generation on either side
//!   and no domain type, so both are NULL.
//!
//! A failing check raises, and so does anything else the second COPY meets (a row the other table already
//! holds, a value too long for it): the proxy then undoes the attempt and runs the staging path with the
//! rows it kept, which decides as every dual write does (`copy`). Only text and CSV formats without column
//! options qualify (a binary row's layout depends on the types, and FORCE_NOT_NULL names the session's
//! columns); only a plain migration (neither a split nor a merge) in `dual_write` or `cutover`.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, Ident, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::compiled::Compiled;
use crate::model::{parse_mapping_expr, referenced_columns, Phase, RuleSet};
use crate::names::{normalize_ident, quote_ident, quote_literal, TableName};
use crate::reads::ReadRouter;
use crate::route::{Route, Side};

/// The statements of a COPY dual-written with COPY alone, in this order (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTee {
    /// `DO <check>; COPY <session's table> ...; COPY <other table> (...) FROM STDIN ...`.
    pub sql: String,
    /// Columns of each row the client sends (the proxy answers the COPY's CopyInResponse itself).
    pub columns: usize,
    /// The migration's index in the rules.
    pub migration: usize,
}

impl CopyTee {
    /// Index of the catalog check among [`sql`](Self::sql)'s statements.
    pub const CHECK: usize = 0;
    /// Index of the client's COPY (into the session's table).
    pub const CLIENT_COPY: usize = 1;
    /// Index of the COPY into the other table.
    pub const OTHER_COPY: usize = 2;
}

/// One column of the other table and what feeds it: a column of the session's table, cast to `cast`.
struct Feed {
    source: String,
    target: String,
    cast: Option<String>,
}

/// The tee of `sql` (one `COPY ... FROM STDIN` naming a migrated table) under `route`, or `None` where
/// only the staging path can dual-write it.
pub(crate) fn copy_tee(rules: &RuleSet, compiled: &Compiled, sql: &str, route: &Route) -> Option<CopyTee> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Copy { source, to: false, target: CopyTarget::Stdin, options, legacy_options, payload: None } =
        &mut statements[0]
    else {
        return None;
    };
    let CopySource::Table { table_name, columns } = source else { return None };
    if columns.is_empty() || !options.iter().all(text_option) || !legacy_options.iter().all(text_legacy_option) {
        return None;
    }
    let router = ReadRouter::new(compiled, route, vec![]);
    router.refuse_shadow_write(table_name).ok()?;
    let index = router.active_migration(table_name)?;
    let m = &compiled.migrations[index];
    let mr = route.get(index);
    if m.is_split() || m.is_merge() || m.broken.is_some() || !matches!(mr.phase, Phase::DualWrite | Phase::Cutover) {
        return None;
    }
    let refused = route.unsafe_schema.iter().any(|u| u.migration == index);
    if refused || crate::backfill_gate::refuse_unbackfilled_new_version(route, index, &m.name).is_err() {
        return None;
    }
    let rule = &rules.migrations[index];
    let (session, other, mapping) = match mr.version {
        Side::Old => (m.table.qualified(), m.shadow.qualified(), &rule.forward),
        Side::New => (m.shadow.qualified(), m.table.qualified(), &rule.backward),
    };
    let sent: Vec<String> = columns.iter().map(normalize_ident).collect();
    let (listed, unlisted) = feeds(mapping, &sent)?;
    let check = check_block(&session, &other, &listed, &unlisted);
    *table_name = session.to_object_name();
    let client = statements[0].to_string();
    if let Statement::Copy { source: CopySource::Table { table_name, columns }, .. } = &mut statements[0] {
        *table_name = other.to_object_name();
        *columns = listed.iter().map(|f| column_ident(&f.target)).collect();
    }
    let other_copy = statements[0].to_string();
    Some(CopyTee { sql: format!("{check}; {client}; {other_copy}"), columns: sent.len(), migration: index })
}

/// The other table's columns fed by the columns the client sends (in the order sent) and by the others,
/// or `None` unless each mapped column is one column of the session's table as itself or a cast, and each
/// column sent feeds exactly one.
fn feeds(mapping: &[(String, String)], sent: &[String]) -> Option<(Vec<Feed>, Vec<Feed>)> {
    let mut fed = Vec::with_capacity(mapping.len());
    for (target, text) in mapping {
        let expr = parse_mapping_expr(text).ok()?;
        let (column, cast) = match &expr {
            Expr::Identifier(ident) => (ident, None),
            Expr::Cast { expr, data_type, format: None, .. } => match expr.as_ref() {
                Expr::Identifier(ident) => (ident, Some(data_type.to_string())),
                _ => return None,
            },
            _ => return None,
        };
        debug_assert_eq!(referenced_columns(&expr).len(), 1);
        fed.push(Feed { source: normalize_ident(column), target: target.clone(), cast });
    }
    let mut listed = Vec::with_capacity(sent.len());
    for column in sent {
        let mut feeding = fed.iter().filter(|f| &f.source == column);
        let feed = feeding.next()?;
        if feeding.next().is_some() {
            return None;
        }
        listed.push(Feed { source: feed.source.clone(), target: feed.target.clone(), cast: feed.cast.clone() });
    }
    let unlisted = fed.into_iter().filter(|f| !sent.contains(&f.source)).collect();
    Some((listed, unlisted))
}

/// Text and CSV options that name no column.
fn text_option(option: &CopyOption) -> bool {
    match option {
        CopyOption::Format(name) => matches!(name.value.to_ascii_lowercase().as_str(), "text" | "csv"),
        CopyOption::ForceQuote(_) | CopyOption::ForceNotNull(_) | CopyOption::ForceNull(_) => false,
        _ => true,
    }
}

fn text_legacy_option(option: &CopyLegacyOption) -> bool {
    match option {
        CopyLegacyOption::Csv(csv) => csv.iter().all(|o| {
            matches!(o, CopyLegacyCsvOption::Header | CopyLegacyCsvOption::Quote(_) | CopyLegacyCsvOption::Escape(_))
        }),
        CopyLegacyOption::Delimiter(_) | CopyLegacyOption::Null(_) | CopyLegacyOption::Header => true,
        _ => false,
    }
}

/// The `DO` block that locks both tables and raises unless the catalog lets the second COPY write the rows
/// the staging path would (see the module documentation).
fn check_block(session: &TableName, other: &TableName, listed: &[Feed], unlisted: &[Feed]) -> String {
    let regclass = |t: &TableName| format!("{}::pg_catalog.regclass", quote_literal(&t.to_string()));
    let (s, o) = (regclass(session), regclass(other));
    let pair = |f: &Feed, extra: &str| {
        format!(
            "EXISTS (SELECT FROM pg_catalog.pg_attribute s JOIN pg_catalog.pg_type st ON st.oid = s.atttypid, \
             pg_catalog.pg_attribute t JOIN pg_catalog.pg_type tt ON tt.oid = t.atttypid \
             WHERE s.attrelid = {s} AND s.attname = {} AND NOT s.attisdropped \
             AND t.attrelid = {o} AND t.attname = {} AND NOT t.attisdropped AND t.attgenerated = '' {extra})",
            quote_literal(&f.source),
            quote_literal(&f.target),
        )
    };
    let mut conditions: Vec<String> = listed
        .iter()
        .map(|f| {
            let cast = match &f.cast {
                Some(cast) => format!(" AND t.atttypid = {}::pg_catalog.regtype", quote_literal(cast)),
                None => String::new(),
            };
            pair(
                f,
                &format!(
                    "AND ((s.atttypid = t.atttypid AND s.atttypmod = t.atttypmod) OR \
                     (s.atttypid IN (21, 23, 20) AND t.atttypid IN (21, 23, 20))){cast}"
                ),
            )
        })
        .collect();
    conditions.extend(unlisted.iter().map(|f| {
        pair(
            f,
            "AND NOT s.atthasdef AND s.attidentity = '' AND s.attgenerated = '' AND st.typtype <> 'd' \
             AND NOT t.atthasdef AND t.attidentity = '' AND tt.typtype <> 'd'",
        )
    }));
    let conditions = conditions.join(" AND ");
    format!(
        "DO $dualwrite$ BEGIN \
         LOCK TABLE {session}, {other} IN ROW EXCLUSIVE MODE; \
         IF EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE (tgrelid = {s} OR tgrelid IN \
         (SELECT relid FROM pg_catalog.pg_partition_tree({s}))) \
         AND NOT tgisinternal AND tgenabled <> 'D' AND tgtype & 7 = 7) \
         OR EXISTS (SELECT FROM pg_catalog.pg_rewrite WHERE ev_class = {s}) \
         OR EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid IN ({s}, {o}) AND relrowsecurity) \
         OR NOT ({conditions}) THEN \
         RAISE EXCEPTION 'dualwrite: this COPY is dual-written through a staging table' USING ERRCODE = '55000'; \
         END IF; END $dualwrite$",
    )
}

/// A column as the catalog spells it, quoted where Postgres would need it.
fn column_ident(name: &str) -> Ident {
    if quote_ident(name) == name {
        Ident::new(name)
    } else {
        Ident::with_quote('"', name)
    }
}
