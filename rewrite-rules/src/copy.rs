//! COPY on a migrated table. `COPY t TO` is a read, routed like one. `COPY t FROM STDIN` is a write: in
//! `dual_write` and `cutover` the one statement becomes five, which PostgreSQL runs in one (implicit, or
//! the client's open) transaction:
//!
//! ```sql
//! CREATE TEMPORARY TABLE pg_temp.__dw_copy ON COMMIT DROP AS SELECT <cols | *> FROM <session's table> LIMIT 0;
//! COPY pg_temp.__dw_copy [(<cols>)] FROM STDIN <client's options>;
//! DO $dualwrite$ ... <the dual write of: INSERT INTO <client's table> [(<cols>)] OVERRIDING SYSTEM VALUE
//!                                        SELECT <cols | *> FROM pg_temp.__dw_copy> ... $dualwrite$;
//! SELECT current_setting('dualwrite.copy_rows');
//! DROP TABLE pg_temp.__dw_copy
//! ```
//!
//! The client's COPY data flows into the staging table (the server answers the COPY with the client's
//! column count and format, since the staging table has exactly the COPY's columns and types), then the
//! rows reach both tables through the same dual-write INSERT any client INSERT gets (`writes`): the
//! session's shape first, the other table through the mapping, defaults and sequences applied once by the
//! INSERT. `OVERRIDING SYSTEM VALUE` keeps COPY's own rule that identity columns take the given values.
//! The dual write runs inside a `DO` block (`copy_block`: plain INSERTs as the syncs first, the upserts
//! on a conflict), which leaves the rows it wrote (the rows copied, less any a BEFORE trigger skipped, as
//! COPY counts) in a transaction-local setting; the client sees the COPY's CopyInResponse and then `COPY n`
//! made from the one row of the query that reads it back ([`RowsDisposition::CountRow`]), so a failing
//! dual write shows only its error; every other answer of the five statements is hidden
//! ([`StatementTransform::HIDDEN`]). An error in any of them aborts the whole string, as any error does.
//! The staging name is fixed: the string creates and drops it, and nothing runs between, so several COPYs
//! in one transaction never meet one (a failure in between aborts the transaction, undoing the CREATE).
//!
//! Only a simple Query can carry several statements: through the extended protocol the proxy refuses the
//! plan ([`crate::Plan::extended_protocol_refusal`]). COPY FROM a server file or program, and a COPY whose
//! Query string carries more lines after it (sqlparser reads them as inline COPY data, while the server
//! reads them as statements) are refused. In `complete` a new-shaped COPY is renamed onto the shadow. A
//! split's old-shaped COPY reaches every target through that INSERT; its new-shaped one is refused. A v1
//! COPY into a merge source (`dual_write` only) is staged from that source and its INSERT gets the merge
//! INSERT's sync, so each row is merged into the shadow by key (`compiled::compile_source`).

use sqlparser::ast::{
    CopySource, CopyTarget, Expr, Ident, InsertOverriding, ObjectName, SelectItem, SetExpr, Statement, TableFactor,
    TableObject,
};

use crate::compiled::Compiled;
use crate::copy_block::{count_statement, CopyBlock};
use crate::dml::syncs_into_truth;
use crate::model::Phase;
use crate::names::TableName;
use crate::plan::{RejectReason, Rejection, RowsDisposition, StatementTransform, TagRewrite};
use crate::reads::{routed_read, ReadRouter};
use crate::route::{Route, Side};
use crate::template::{parse_statement, template_query};
use crate::writes::{rewrite_dml, Companion, Companions, Outcome};

/// The staging table of a COPY FROM STDIN, in the session's temporary schema.
pub(crate) const STAGING: &str = "pg_temp.__dw_copy";

/// Rewrites a COPY statement (see the module documentation).
pub(crate) fn rewrite_copy(compiled: &Compiled, route: &Route, mut statement: Statement) -> Result<Outcome, Rejection> {
    let Statement::Copy { source, to, target, payload, .. } = &mut statement else {
        return Ok(Outcome::unchanged());
    };
    let router = ReadRouter::new(compiled, route, vec![]);
    if payload.is_some() {
        // The parser took the lines after `COPY ... FROM STDIN;` as inline data; the server reads them as
        // statements, which this string may hide from the rewriter.
        let index = match source {
            CopySource::Table { table_name, .. } => router.active_migration(table_name),
            CopySource::Query(_) => None,
        };
        // Without a migrated target, the first migration (the rewriter only runs when one is named).
        let index = index.unwrap_or(0);
        let name = compiled.migrations.get(index).map(|m| m.name.as_str()).unwrap_or("");
        return Err(Rejection::new(
            name,
            index,
            RejectReason::Unparseable,
            "statements on the lines after COPY ... FROM STDIN in one Query string",
        ));
    }
    let (table_name, columns) = match source {
        CopySource::Query(_) => return route_copy_query(compiled, route, statement),
        CopySource::Table { table_name, columns } => (table_name, columns),
    };
    if *to {
        router.refuse_unbackfilled_merge_read(table_name)?;
    } else {
        router.refuse_shadow_write(table_name)?;
    }
    let Some(index) = router.active_migration(table_name) else { return Ok(Outcome::unchanged()) };
    let m = &compiled.migrations[index];
    let mr = route.get(index);
    let mut outcome = Outcome::unchanged();
    outcome.migrations.insert(index);
    if *to {
        if m.is_merge() && mr.version == Side::New {
            return Err(Rejection::new(&m.name, index, RejectReason::MergedTablesWrite, "a new-version COPY TO"));
        }
        match routed_read(m, mr, table_name, None) {
            None => return Ok(outcome_unchanged_touching(index)),
            Some(TableFactor::Table { name, .. }) => *table_name = name,
            Some(derived) => {
                // COPY (SELECT <columns or *> FROM (<view>) AS t) TO ...
                let mut query = template_query("SELECT * FROM __dw_table");
                if let SetExpr::Select(select) = query.body.as_mut() {
                    select.from[0].relation = derived;
                    if !columns.is_empty() {
                        select.projection = projection(columns);
                    }
                }
                *source = CopySource::Query(Box::new(query));
            }
        }
        outcome.statement = Some(statement);
        return Ok(outcome);
    }
    outcome.write = true;
    // A merge source's rows reach the shadow through the merge INSERT's upsert, in `dual_write` and `cutover`.
    let merge_source = match TableName::from_object_name(table_name) {
        Some(name) if m.is_merge() => m.source_of(&name, route.unqualified_reaches(index)),
        _ => None,
    };
    if m.is_merge()
        && (merge_source.is_none() || mr.version == Side::New || !matches!(mr.phase, Phase::DualWrite | Phase::Cutover))
    {
        let detail = if mr.version == Side::New {
            "COPY FROM in a new-version session".to_string()
        } else {
            format!("COPY FROM in phase {}", mr.phase)
        };
        return Err(Rejection::new(&m.name, index, RejectReason::MergedTablesWrite, &detail));
    }
    if m.is_split() && (mr.version == Side::New || mr.phase == Phase::Complete) {
        // As every write of a split's new shape (see `writes`).
        return Err(Rejection::new(&m.name, index, RejectReason::SplitNewShapeWrite, "COPY FROM"));
    }
    match (mr.phase, mr.version) {
        (Phase::Complete, Side::New) => {
            *table_name = m.shadow.to_object_name();
            outcome.statement = Some(statement);
            return Ok(outcome);
        }
        (Phase::Complete, Side::Old) => {
            return Err(Rejection::new(&m.name, index, RejectReason::RetiredVersionWrite, ""))
        }
        _ => {}
    }
    crate::backfill_gate::refuse_unbackfilled_new_version(route, index, &m.name)?;
    let refuse = |detail: &str| Err(Rejection::new(&m.name, index, RejectReason::CopyFrom, detail));
    match target {
        CopyTarget::Stdin => {}
        CopyTarget::File { .. } => return refuse("COPY FROM a server file; use COPY ... FROM STDIN (psql's \\copy)"),
        CopyTarget::Program { .. } => return refuse("COPY FROM PROGRAM; use COPY ... FROM STDIN (psql's \\copy)"),
        CopyTarget::Stdout => return refuse("COPY FROM STDOUT"),
    }
    if let Some(why) = &m.broken {
        return Err(Rejection::new(&m.name, index, RejectReason::InvalidRules, why));
    }
    let client_table = table_name.clone();
    let columns = columns.clone();
    let physical = match (merge_source, mr.version) {
        (Some(source), _) => &source.table,
        (None, Side::Old) => &m.table,
        (None, Side::New) => &m.shadow,
    };
    *table_name = staging_name();

    let invalid = |why: String| Rejection::new(&m.name, index, RejectReason::InvalidRules, &why);
    let create = create_staging(physical.to_object_name(), &columns).map_err(invalid)?;
    let insert = staging_insert(client_table, &columns).map_err(invalid)?;
    let Some(dual_write) = rewrite_dml(compiled, route, None, insert)?.statement else {
        return Err(invalid("the COPY's INSERT was not dual-written".into()));
    };
    let sync = match merge_source {
        Some(source) => &source.forward,
        None => m.producing(mr.version.other()),
    };
    // A sync into the source of truth is a plain INSERT already (`dml::insert_sync`): a row there
    // fails the COPY, with no upsert to fall back to.
    let into_truth = syncs_into_truth(m, mr);
    let (sync_ctes, synced): (Vec<&str>, _) = match mr.version {
        _ if into_truth => (Vec::new(), Vec::new()),
        Side::Old => (sync.syncs.iter().map(|s| s.cte_name.as_str()).collect(), m.shadows.clone()),
        Side::New => (sync.syncs.iter().map(|s| s.cte_name.as_str()).collect(), vec![m.table.clone()]),
    };
    let block = CopyBlock::new(dual_write, &sync_ctes, synced).map_err(invalid)?;
    let count = count_statement().map_err(invalid)?;
    let drop = parse_statement(&format!("DROP TABLE {STAGING}")).map_err(invalid)?;
    outcome.statement = Some(statement);
    outcome.transform = StatementTransform::HIDDEN;
    let answers_for_copy = StatementTransform { command_tag: Some(TagRewrite::Copy), rows: RowsDisposition::CountRow };
    outcome.companions = Some(Box::new(Companions {
        before: vec![(Companion::Sql(Box::new(create)), StatementTransform::HIDDEN)],
        after: vec![
            (Companion::Block(Box::new(block)), StatementTransform::HIDDEN),
            (Companion::Sql(Box::new(count)), answers_for_copy),
            (Companion::Sql(Box::new(drop)), StatementTransform::HIDDEN),
        ],
    }));
    Ok(outcome)
}

/// `COPY (<query>) TO`: the query's reads are routed.
fn route_copy_query(compiled: &Compiled, route: &Route, statement: Statement) -> Result<Outcome, Rejection> {
    crate::writes::route_reads(compiled, route, statement)
}

fn outcome_unchanged_touching(index: usize) -> Outcome {
    let mut outcome = Outcome::unchanged();
    outcome.migrations.insert(index);
    outcome
}

/// [`STAGING`] as a name.
fn staging_name() -> ObjectName {
    ObjectName::from(vec![Ident::new("pg_temp"), Ident::new("__dw_copy")])
}

fn projection(columns: &[Ident]) -> Vec<SelectItem> {
    columns.iter().map(|c| SelectItem::UnnamedExpr(Expr::Identifier(c.clone()))).collect()
}

/// `CREATE TEMPORARY TABLE <staging> ON COMMIT DROP AS SELECT <columns | *> FROM <physical> LIMIT 0`: the
/// COPY's columns with the table's types (and typmods), no constraints, no rows.
fn create_staging(physical: ObjectName, columns: &[Ident]) -> Result<Statement, String> {
    let mut create = parse_statement(&format!(
        "CREATE TEMPORARY TABLE {STAGING} ON COMMIT DROP AS SELECT * FROM __dw_table LIMIT 0"
    ))?;
    if let Statement::CreateTable(table) = &mut create {
        if let Some(query) = table.query.as_mut() {
            if let SetExpr::Select(select) = query.body.as_mut() {
                if let TableFactor::Table { name, .. } = &mut select.from[0].relation {
                    *name = physical;
                }
                if !columns.is_empty() {
                    select.projection = projection(columns);
                }
            }
        }
    }
    Ok(create)
}

/// `INSERT INTO <client's table> [(<columns>)] OVERRIDING SYSTEM VALUE SELECT <columns | *> FROM <staging>`.
fn staging_insert(table: ObjectName, columns: &[Ident]) -> Result<Statement, String> {
    let mut insert =
        parse_statement(&format!("INSERT INTO __dw_target OVERRIDING SYSTEM VALUE SELECT * FROM {STAGING}"))?;
    if let Statement::Insert(i) = &mut insert {
        i.table = TableObject::TableName(table);
        i.columns = columns.iter().map(|c| ObjectName::from(vec![c.clone()])).collect();
        i.overriding = Some(InsertOverriding::System);
        if let Some(SetExpr::Select(select)) = i.source.as_mut().map(|q| q.body.as_mut()) {
            if !columns.is_empty() {
                select.projection = projection(columns);
            }
        }
    }
    Ok(insert)
}

impl StatementTransform {
    /// A statement the proxy added around the client's (COPY's staging): its whole answer is dropped.
    pub const HIDDEN: StatementTransform = StatementTransform { command_tag: None, rows: RowsDisposition::Hidden };
}
