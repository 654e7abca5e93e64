//! The rules of one migration against the live schema: both tables exist, every mapped column exists in the
//! table it maps to, the key is unique in both tables (dual writes upsert the shadow on it), every mapping
//! expression prepares over its source table and its value is assignable to its target column (both found
//! by preparing statements, never by executing them), and a sample of old rows mapped forward then
//! backward comes back unchanged.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use dualwrite_rules::{quote_ident, Migration, RuleSet, TableName};
use tokio_postgres::Client;

use super::definition::{changed_parts, definition};
use super::key_defaults::Finding;
use super::present::{present_inputs, PresentInputs};

/// Problems and warnings found for one migration.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub errors: usize,
    pub warnings: usize,
}

/// A column as the catalog describes it.
#[derive(Clone)]
struct Column {
    /// `format_type` spelling, valid SQL for a cast.
    sql_type: String,
    /// NOT NULL with neither a default, an identity nor a generation expression: an insert must give it.
    required: bool,
    /// NOT NULL (a merge source's `present` column must be computed from one).
    not_null: bool,
}

/// A table found in the catalog.
struct Table {
    /// The name as the rules spell it (quoted where needed).
    display: String,
    /// The name as SQL the check runs names it: schema-qualified (an unqualified rules-file name is in
    /// `public`), so the control connection's `search_path` never picks another relation.
    sql: String,
    oid: u32,
    columns: HashMap<String, Column>,
    /// Column names in table order.
    order: Vec<String>,
}

/// The report's lines, counted: `ok`, `ERROR` and `warning` findings, and uncounted ones.
pub(super) struct Report<'a> {
    out: &'a mut dyn Write,
    pub(super) tally: Tally,
}

impl<'a> Report<'a> {
    pub(super) fn new(out: &'a mut dyn Write) -> Report<'a> {
        Report { out, tally: Tally::default() }
    }
    pub(super) fn ok(&mut self, what: &str) -> std::io::Result<()> {
        writeln!(self.out, "  ok       {what}")
    }
    pub(super) fn error(&mut self, what: &str) -> std::io::Result<()> {
        self.tally.errors += 1;
        writeln!(self.out, "  ERROR    {}", one_line(what))
    }
    pub(super) fn warning(&mut self, what: &str) -> std::io::Result<()> {
        self.tally.warnings += 1;
        writeln!(self.out, "  warning  {}", one_line(what))
    }
    /// A finding the rules accept (not counted).
    pub(super) fn accepted(&mut self, what: &str) -> std::io::Result<()> {
        writeln!(self.out, "  accepted {}", one_line(what))
    }
    /// Something worth a look that is no problem (not counted).
    pub(super) fn note(&mut self, what: &str) -> std::io::Result<()> {
        writeln!(self.out, "  note     {}", one_line(what))
    }
    /// A continuation of the line above.
    pub(super) fn detail(&mut self, what: &str) -> std::io::Result<()> {
        writeln!(self.out, "           {}", one_line(what))
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A database error with its SQLSTATE and message (tokio-postgres's Display omits them).
pub(crate) fn db_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// Checks `migration` against the database behind `client`, writing one line per finding.
pub async fn check_migration(
    client: &Client,
    migration: &Migration,
    sample: i64,
    out: &mut dyn Write,
) -> anyhow::Result<Tally> {
    let targets = migration.targets();
    let shadows = targets.iter().map(|t| t.table.to_string()).collect::<Vec<_>>().join(" + ");
    let old_tables = migration.old_tables();
    let sources = old_tables.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" + ");
    writeln!(out, "migration {}: {sources} -> {shadows}", migration.name)?;
    let mut report = Report::new(out);
    let mut olds = Vec::with_capacity(old_tables.len());
    for table in &old_tables {
        olds.push(find_table(client, table, &mut report).await?);
    }
    let mut news = Vec::with_capacity(targets.len());
    for target in &targets {
        news.push(find_table(client, target.table, &mut report).await?);
    }
    let (Some(olds), Some(news)) =
        (olds.into_iter().collect::<Option<Vec<Table>>>(), news.into_iter().collect::<Option<Vec<Table>>>())
    else {
        return Ok(report.tally);
    };
    // A merge's old shape is its sources joined on the key (the mappings are checked against that join).
    let old = joined(&olds, &migration.key);
    for (source, table) in migration.merge.iter().zip(&olds) {
        check_present(source, table, &mut report)?;
    }

    let old_mapped_ok = check_columns(&old, migration.old_columns(), "backward", &mut report)?;
    let mut new_mapped_ok = true;
    for (target, new) in targets.iter().zip(&news) {
        new_mapped_ok &= check_columns(new, target.forward.iter().map(|(c, _)| c.as_str()), "forward", &mut report)?;
    }
    for table in olds.iter().chain(&news) {
        check_key(client, table, &migration.key, &mut report).await?;
    }
    for finding in super::key_defaults::findings(client, migration).await? {
        match finding {
            Finding::OneSource { column, described, .. } => {
                report.ok(&format!("key column {column} takes its default from {described}"))?
            }
            Finding::Separate(separate) => report.error(&separate.to_string())?,
        }
    }
    for finding in super::key_equality::findings(client, migration).await? {
        report.error(&finding)?;
    }
    for finding in super::row_security::findings(client, migration).await? {
        report.error(&finding)?;
    }
    for trigger in super::row_triggers::inspect(client, migration).await? {
        if trigger.refused() {
            report.error(&trigger.refusal())?;
        } else {
            report.warning(&trigger.warning())?;
        }
    }
    check_definition(client, migration, &mut report).await?;
    // Expressions are prepared only against columns that exist, or every error would repeat the above.
    let mut forward_ok = new_mapped_ok;
    for (target, new) in targets.iter().zip(&news) {
        forward_ok = forward_ok && check_mappings(client, "forward", target.forward, &old, new, &mut report).await?;
    }
    // A split's backward mapping reads its targets joined on the key.
    let new = joined(&news, &migration.key);
    let mut backward_ok = old_mapped_ok;
    if migration.is_merge() {
        // Each source's columns are written into that source: its backward mapping is checked against it.
        for (source, table) in migration.merge.iter().zip(&olds) {
            backward_ok =
                backward_ok && check_mappings(client, "backward", &source.backward, &new, table, &mut report).await?;
        }
    } else {
        backward_ok =
            backward_ok && check_mappings(client, "backward", &migration.backward, &new, &old, &mut report).await?;
    }
    if forward_ok && backward_ok && old_mapped_ok {
        check_round_trip(client, migration, &old, sample, &mut report).await?;
    } else {
        writeln!(report.out, "  skipped  round trip (the mappings have errors)")?;
    }
    Ok(report.tally)
}

/// The rules' definition of `migration` against the one recorded when it was registered
/// (`check::definition`); nothing before a proxy has registered it, or on a state schema without the record.
async fn check_definition(client: &Client, migration: &Migration, report: &mut Report<'_>) -> anyhow::Result<()> {
    let recorded_here: bool =
        client.query_one("SELECT to_regclass('dualwrite.migration_definitions') IS NOT NULL", &[]).await?.get(0);
    if !recorded_here {
        return Ok(());
    }
    let row = client
        .query_opt(
            "SELECT m.phase, d.definition::text FROM dualwrite.migrations m
               JOIN dualwrite.migration_definitions d ON d.migration = m.name
              WHERE m.name = $1",
            &[&migration.name],
        )
        .await?;
    let Some(row) = row else { return Ok(()) };
    let (phase, recorded): (String, String) = (row.get(0), row.get(1));
    let changed = changed_parts(&serde_json::from_str(&recorded)?, &definition(migration));
    let line = if changed.is_empty() {
        report.ok("definition (tables, key, mappings) as registered")
    } else if phase == "off" {
        report.warning(&format!(
            "the rules redefine it ({} changed): a proxy loading them records the new definition (the migration \
             is off); empty the shadow before entering dual_write again",
            changed.join(", ")
        ))
    } else {
        report.error(&format!(
            "the rules define it differently from when it was registered ({} changed), and it is in {phase}: a \
             proxy refuses them; set it off first (DUALWRITE PHASE {} off FORCE), or keep the recorded definition",
            changed.join(", "),
            migration.name
        ))
    };
    Ok(line?)
}

/// A merge source's `present` column must never be NULL while the source's row exists (a DELETE of
/// another source drops the shadow row when it is): sure when it maps NOT NULL columns through an expression
/// that is NULL only when they are (`check::present`).
fn check_present(source: &dualwrite_rules::MergeSource, table: &Table, report: &mut Report<'_>) -> anyhow::Result<()> {
    let expression = present_expression(source);
    let present = format!("present = {} (from {} of {})", source.present, expression.unwrap_or("?"), table.display);
    let columns = match expression.map(present_inputs) {
        Some(PresentInputs::Strict(columns)) => columns,
        Some(PresentInputs::Unknown) | None => {
            report.warning(&format!(
                "{present}: neither a column nor a strict expression of columns (casts, operators, built-in \
                 functions such as lower), so the proxy cannot tell whether it is ever NULL; make sure it is not"
            ))?;
            return Ok(());
        }
    };
    let nullable: Vec<&String> =
        columns.iter().filter(|c| table.columns.get(*c).is_some_and(|column| !column.not_null)).collect();
    let plain = matches!(&columns[..], [only] if expression.map(str::trim) == Some(only.as_str()));
    let written = match (nullable.first(), plain) {
        (None, true) => report.ok(&format!("{present}: NOT NULL")),
        (None, false) => report.ok(&format!("{present}: NULL only when {} is, and NOT NULL", columns.join(" or "))),
        (Some(column), true) => report.error(&format!(
            "{present}: {column} may be NULL, so a DELETE of another source could drop a row this one still \
             holds; make it NOT NULL or name another column"
        )),
        (Some(column), false) => report.error(&format!(
            "{present}: NULL when {column} is, which may be NULL, so a DELETE of another source could drop a row \
             this one still holds; make {column} NOT NULL or name another column"
        )),
    };
    Ok(written?)
}

/// A merge source's `present` column as its forward mapping computes it (`None`: not mapped).
fn present_expression(source: &dualwrite_rules::MergeSource) -> Option<&str> {
    source.forward.iter().find(|(c, _)| *c == source.present).map(|(_, e)| e.as_str())
}

/// The merge sources of `rules` whose `present` column is a plain old column that may be NULL, each as a
/// sentence naming the migration, the source and what to do. Such a source's row can exist while the shadow
/// shows it absent, so a DELETE of another source would drop a row this one still holds: the proxy refuses
/// to register such rules (at start, on reload and in `dualwrite apply`), as `dualwrite check` reports them.
pub(crate) async fn nullable_presents(client: &Client, rules: &RuleSet) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut found = Vec::new();
    for migration in &rules.migrations {
        for finding in nullable_presents_of(client, migration).await? {
            found.push(format!("migration `{}` cannot be registered: {finding}", migration.name));
        }
    }
    Ok(found)
}

/// [`nullable_presents`] of one migration (none unless it is a merge), each sentence without the migration's
/// name: what the schema watch reports while the proxy runs.
pub(crate) async fn nullable_presents_of(
    client: &Client,
    migration: &dualwrite_rules::Migration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut found = Vec::new();
    for source in &migration.merge {
        let Some(expression) = present_expression(source) else { continue };
        // An expression the proxy cannot judge is `dualwrite check`'s warning, not a refusal.
        let PresentInputs::Strict(columns) = present_inputs(expression) else { continue };
        let table = source.table.to_string();
        let nullable: Option<String> = client
            .query_opt(
                "SELECT attname::text FROM pg_attribute
                  WHERE attrelid = to_regclass($1) AND attname = ANY($2) AND attnum > 0 AND NOT attisdropped
                    AND NOT attnotnull
                  ORDER BY array_position($2, attname::text) LIMIT 1",
                &[&source.table.qualified().to_string(), &columns],
            )
            .await?
            .map(|row| row.get(0));
        if let Some(column) = nullable {
            let reads = if expression.trim() == column { String::new() } else { format!(", NULL when {column} is") };
            found.push(format!(
                "its present column {} is {expression} of {table}{reads}, which may be NULL, so a DELETE of \
                 another source could drop a row {table} still holds; make {column} NOT NULL or name another \
                 present column",
                source.present,
            ));
        }
    }
    Ok(found)
}

async fn find_table(client: &Client, name: &TableName, report: &mut Report<'_>) -> anyhow::Result<Option<Table>> {
    let (display, sql) = (name.to_string(), name.qualified().to_string());
    let oid: Option<u32> = client.query_one("SELECT to_regclass($1)::oid", &[&sql]).await?.get(0);
    let Some(oid) = oid else {
        report.error(&format!("table {display} does not exist"))?;
        return Ok(None);
    };
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod),
                    attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = '', attnotnull
               FROM pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            &[&oid],
        )
        .await?;
    let mut columns = HashMap::new();
    let mut order = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        order.push(name.clone());
        columns.insert(name, Column { sql_type: row.get(1), required: row.get(2), not_null: row.get(3) });
    }
    report.ok(&format!("table {display} exists ({} columns)", order.len()))?;
    Ok(Some(Table { display, sql, oid, columns, order }))
}

/// Tables as one table to read from: the shadow (or old table), or a split's targets (a merge's sources)
/// joined on the key.
fn joined(tables: &[Table], key: &[String]) -> Table {
    let keys = key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
    let mut all = Table {
        display: tables[0].display.clone(),
        sql: tables[0].sql.clone(),
        oid: tables[0].oid,
        columns: tables[0].columns.clone(),
        order: tables[0].order.clone(),
    };
    for t in &tables[1..] {
        all.display = format!("{} JOIN {} USING ({keys})", all.display, t.display);
        all.sql = format!("{} JOIN {} USING ({keys})", all.sql, t.sql);
        for column in &t.order {
            if !all.columns.contains_key(column) {
                all.columns.insert(column.clone(), t.columns[column].clone());
                all.order.push(column.clone());
            }
        }
    }
    if tables.len() > 1 {
        all.display = format!("({})", all.display);
        all.sql = format!("({})", all.sql);
    }
    all
}

/// Every mapped column exists in `table`; columns the mapping leaves out are reported. Returns false when
/// a mapped column is missing.
fn check_columns<'m>(
    table: &Table,
    mapped: impl Iterator<Item = &'m str>,
    side: &str,
    report: &mut Report<'_>,
) -> anyhow::Result<bool> {
    let mapped: BTreeSet<&str> = mapped.collect();
    let mut all_exist = true;
    for column in &mapped {
        if !table.columns.contains_key(*column) {
            report.error(&format!("{side}.{column}: column \"{column}\" does not exist in {}", table.display))?;
            all_exist = false;
        }
    }
    for column in &table.order {
        if mapped.contains(column.as_str()) {
            continue;
        }
        if table.columns[column].required {
            report.error(&format!(
                "{}.{column} is NOT NULL without a default and [migration.{side}] does not map it: writes to {} would fail",
                table.display, table.display
            ))?;
        } else {
            report.warning(&format!(
                "{}.{column} is not mapped by [migration.{side}]: rows written through the mapping get its default",
                table.display
            ))?;
        }
    }
    if all_exist {
        report.ok(&format!("{}: the {} column(s) of [migration.{side}] exist", table.display, mapped.len()))?;
    }
    Ok(all_exist)
}

/// The key columns exist and some unique index without predicate or expressions covers exactly them.
async fn check_key(client: &Client, table: &Table, key: &[String], report: &mut Report<'_>) -> anyhow::Result<()> {
    let key_list = key.join(", ");
    let missing: Vec<&String> = key.iter().filter(|k| !table.columns.contains_key(k.as_str())).collect();
    if !missing.is_empty() {
        // Already reported as an unknown mapped column; name the key consequence once.
        report.error(&format!("key ({key_list}): {} has no column {missing:?}", table.display))?;
        return Ok(());
    }
    let mut sorted: Vec<String> = key.to_vec();
    sorted.sort();
    let unique: bool = client
        .query_one(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_index i
                  WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                    AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                           FROM pg_attribute a
                          WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = $2::text[])",
            &[&table.oid, &sorted],
        )
        .await?
        .get(0);
    if unique {
        report.ok(&format!("key ({key_list}) is unique in {}", table.display))?;
    } else {
        report.error(&format!(
            "key ({key_list}) has no unique index or primary key in {} (dual writes upsert on it)",
            table.display
        ))?;
    }
    Ok(())
}

/// Prepares each expression of `mapping` over `from`, then its assignment to the target column of `to`.
/// Returns true when all prepared.
async fn check_mappings(
    client: &Client,
    side: &str,
    mapping: &[(String, String)],
    from: &Table,
    to: &Table,
    report: &mut Report<'_>,
) -> anyhow::Result<bool> {
    let mut all_ok = true;
    for (column, expression) in mapping {
        let label = format!("{side}.{column} = {expression}");
        let select = format!("SELECT ({expression}) FROM {}", from.sql);
        let statement = match client.prepare(&select).await {
            Ok(statement) => statement,
            Err(error) => {
                report.error(&format!("{label}: does not prepare over {}: {}", from.display, db_message(&error)))?;
                all_ok = false;
                continue;
            }
        };
        let produced = statement.columns()[0].type_().name().to_owned();
        let target = &to.columns[column.as_str()].sql_type;
        // Preparing (not executing) the INSERT lets Postgres itself decide whether the value is assignable.
        let insert = format!("INSERT INTO {} ({}) {select}", to.sql, quote_ident(column));
        match client.prepare(&insert).await {
            Ok(_) => report.ok(&format!("{label} ({produced} -> {target})"))?,
            Err(error) => {
                report.error(&format!(
                    "{label}: its {produced} value cannot be assigned to {}.{column} ({target}): {}",
                    to.display,
                    db_message(&error)
                ))?;
                all_ok = false;
            }
        }
    }
    Ok(all_ok)
}

/// Maps up to `sample` old rows forward then backward in one query and compares them with the originals.
async fn check_round_trip(
    client: &Client,
    migration: &Migration,
    old: &Table,
    sample: i64,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    let forward: Vec<String> = migration.forward.iter().map(|(c, e)| format!("({e}) AS {}", quote_ident(c))).collect();
    let backward: Vec<String> = migration
        .backward
        .iter()
        .map(|(c, e)| format!("CAST(({e}) AS {}) AS {}", old.columns[c.as_str()].sql_type, quote_ident(c)))
        .collect();
    let columns: Vec<String> = migration.old_columns().map(quote_ident).collect();
    let originals: Vec<String> = columns.iter().map(|c| format!("s.{c}")).collect();
    let returned: Vec<String> = columns.iter().map(|c| format!("b.{c}")).collect();
    let as_text = |cols: &[String]| cols.iter().map(|c| format!("{c}::text")).collect::<Vec<_>>().join(", ");
    // Unqualified column names in the mappings resolve against the nearest FROM: the old row inside, the
    // forward-mapped row one level up.
    let sql = format!(
        "SELECT ARRAY[{orig_text}], ARRAY[{back_text}]
           FROM (SELECT * FROM {table} LIMIT $1) AS s
          CROSS JOIN LATERAL (
                SELECT {backward} FROM (SELECT {forward} FROM (SELECT s.*) AS __dw_old) AS __dw_new
          ) AS b
          WHERE ({orig}) IS DISTINCT FROM ({back})",
        orig_text = as_text(&originals),
        back_text = as_text(&returned),
        table = old.sql,
        backward = backward.join(", "),
        forward = forward.join(", "),
        orig = originals.join(", "),
        back = returned.join(", "),
    );
    let sampled: i64 = client
        .query_one(&format!("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT $1) AS s", old.sql), &[&sample])
        .await?
        .get(0);
    if sampled == 0 {
        report.warning(&format!("round trip not tried: {} has no rows to sample", old.display))?;
        return Ok(());
    }
    let differing = match client.query(&sql, &[&sample]).await {
        Ok(rows) => rows,
        Err(error) => {
            report.error(&format!("round trip failed to run: {}", db_message(&error)))?;
            return Ok(());
        }
    };
    if differing.is_empty() {
        return Ok(
            report.ok(&format!("round trip (forward then backward) on {sampled} sampled row(s) of {}", old.display))?
        );
    }
    let names: Vec<&str> = migration.old_columns().collect();
    let examples: Vec<String> = differing
        .iter()
        .take(3)
        .map(|row| {
            let before: Vec<Option<String>> = row.get(0);
            let after: Vec<Option<String>> = row.get(1);
            let changes: Vec<String> = names
                .iter()
                .zip(before.iter().zip(after.iter()))
                .filter(|(_, (b, a))| b != a)
                .map(|(name, (b, a))| format!("{name} {} -> {}", show(b), show(a)))
                .collect();
            let key: Vec<String> = migration
                .key
                .iter()
                .filter_map(|k| names.iter().position(|n| n == k).map(|i| format!("{k}={}", show(&before[i]))))
                .collect();
            format!("[{}] {}", key.join(", "), changes.join(", "))
        })
        .collect();
    report.warning(&format!(
        "round trip is lossy: {} of {sampled} sampled row(s) of {} do not come back the same through forward then backward (a rollback would change them), e.g. {}",
        differing.len(),
        old.display,
        examples.join("; ")
    ))?;
    Ok(())
}

pub(crate) fn show(value: &Option<String>) -> String {
    match value {
        Some(v) => format!("'{v}'"),
        None => "NULL".to_owned(),
    }
}
