//! Replaying statements through the rewriter: reading a statements file (one statement per line, or a
//! pg_stat_statements CSV export), choosing the route the statements are replayed under, and reporting each
//! statement's plan.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use dualwrite_rules::{MigrationRoute, Phase, Plan, Rewriter, Route, RuleSet, Side};

/// How many replayed statements got each plan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCounts {
    pub passed_through: usize,
    pub rewritten: usize,
    pub rejected: usize,
}

/// Reads a statements file (see [`parse_statements`]).
pub fn read_statements(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_statements(&text).with_context(|| format!("reading statements from {}", path.display()))
}

/// The statements of a replay file. A file whose first line is a CSV header with a `query` column (as
/// `COPY (SELECT * FROM pg_stat_statements) TO STDOUT WITH CSV HEADER` writes) yields that column of every
/// record (records may span lines); any other file yields one statement per line, skipping blank lines and
/// `--` comments.
pub fn parse_statements(text: &str) -> anyhow::Result<Vec<String>> {
    let first_line = text.lines().next().unwrap_or("");
    if let Some(query_index) = csv_query_column(first_line) {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
        let mut statements = Vec::new();
        for (number, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("CSV record {}", number + 1))?;
            let Some(query) = record.get(query_index) else {
                bail!("CSV record {} has no query field", number + 1);
            };
            if !query.trim().is_empty() {
                statements.push(query.trim().to_owned());
            }
        }
        return Ok(statements);
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("--"))
        .map(str::to_owned)
        .collect())
}

/// The index of the `query` column when `line` is a CSV header naming one.
fn csv_query_column(line: &str) -> Option<usize> {
    if !line.contains(',') {
        return None;
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
    let header = reader.records().next()?.ok()?;
    let fields: Vec<&str> = header.iter().map(str::trim).collect();
    // A SQL statement that happens to contain `query` and commas is not a header: headers are bare names.
    if !fields.iter().all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
        return None;
    }
    fields.iter().position(|f| f.eq_ignore_ascii_case("query"))
}

/// The route statements are replayed under: each migration in `phase` (default: its initial phase), sessions
/// on `version` (default: each migration's old version) reading their own version's table.
pub fn route_for(rules: &RuleSet, version: Option<&str>, phase: Option<Phase>) -> anyhow::Result<Route> {
    let mut per_migration = Vec::with_capacity(rules.migrations.len());
    for migration in &rules.migrations {
        let side = match version {
            None => Side::Old,
            Some(v) if v == migration.versions.old => Side::Old,
            Some(v) if v == migration.versions.new => Side::New,
            Some(v) => bail!(
                "--as-version {v}: migration {} has versions {} and {}",
                migration.name,
                migration.versions.old,
                migration.versions.new
            ),
        };
        per_migration.push(MigrationRoute::own(phase.unwrap_or(migration.initial_phase), side));
    }
    Ok(Route { per_migration, ..Route::default() })
}

/// Plans every statement under `route` and reports each outcome.
pub fn replay(
    rules: &Arc<RuleSet>,
    route: &Route,
    statements: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<ReplayCounts> {
    let rewriter = Rewriter::new(rules.clone(), 0);
    let mut counts = ReplayCounts::default();
    for sql in statements {
        let shown = one_line(sql);
        match rewriter.plan(sql, route) {
            Plan::PassThrough => {
                counts.passed_through += 1;
                writeln!(out, "  passed-through  {shown}")?;
            }
            Plan::Rewritten { sql: rewritten, .. } => {
                counts.rewritten += 1;
                writeln!(out, "  rewritten       {shown}")?;
                writeln!(out, "      -> {}", one_line(&rewritten))?;
            }
            Plan::Rejected(rejection) => {
                counts.rejected += 1;
                writeln!(out, "  REJECTED        {shown}")?;
                writeln!(out, "      why: {} (SQLSTATE {})", one_line(&rejection.message), rejection.sqlstate)?;
            }
        }
    }
    Ok(counts)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
