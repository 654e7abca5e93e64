//! The statement-corpus format: SQL statements, one per line, each with the outcome it should get under
//! the route set by the last `@ <phase> <version> <read version>` line (`v1`/`v2`-style names are the
//! migration's versions; `old`/`new` also work). Lines starting with `--` and blank lines are ignored.
//!
//! ```text
//! @ dual_write v1 v1
//! pass   | SELECT * FROM users WHERE id = $1
//! write  | UPDATE users SET name = $1 WHERE id = $2
//! reject key_changing_update | UPDATE users SET id = 2
//! ```
//! Used by the corpus tests and usable for replaying an application's statements (`dualwrite check`).

use crate::model::{Phase, RuleSet};
use crate::plan::Plan;
use crate::route::{MigrationRoute, Route, Side};

/// What a statement of the corpus should become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Pass,
    Read,
    Write,
    /// With the `RejectReason::as_str` label.
    Reject(String),
}

impl Expected {
    /// The outcome `plan` actually is, in the same terms.
    pub fn of(plan: &Plan) -> Expected {
        match plan {
            Plan::PassThrough => Expected::Pass,
            Plan::Rewritten { writes: true, .. } => Expected::Write,
            Plan::Rewritten { .. } => Expected::Read,
            Plan::Rejected(r) => Expected::Reject(r.reason.as_str().to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CorpusEntry {
    /// 1-based line number in the corpus text.
    pub line: usize,
    pub route: MigrationRoute,
    pub expected: Expected,
    pub sql: String,
}

impl CorpusEntry {
    /// The entry's route for every migration of `rules`.
    pub fn route_for(&self, rules: &RuleSet) -> Route {
        Route::uniform(rules, self.route)
    }
}

/// Reads a corpus. Version names are resolved against the first migration of `rules`.
pub fn parse(text: &str, rules: &RuleSet) -> Result<Vec<CorpusEntry>, String> {
    let versions = rules.migrations.first().map(|m| m.versions.clone());
    let side = |word: &str, line: usize| -> Result<Side, String> {
        match (word, &versions) {
            ("old", _) => Ok(Side::Old),
            ("new", _) => Ok(Side::New),
            (w, Some(v)) if w == v.old => Ok(Side::Old),
            (w, Some(v)) if w == v.new => Ok(Side::New),
            (w, _) => Err(format!("line {line}: unknown version `{w}`")),
        }
    };
    let mut route = None;
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        if let Some(spec) = trimmed.strip_prefix('@') {
            let words: Vec<&str> = spec.split_whitespace().collect();
            let [phase, version, read] = words[..] else {
                return Err(format!("line {line}: expected `@ <phase> <version> <read version>`"));
            };
            let phase: Phase = phase.parse().map_err(|e| format!("line {line}: {e}"))?;
            route = Some(MigrationRoute { phase, version: side(version, line)?, read_source: side(read, line)? });
            continue;
        }
        let (outcome, sql) =
            trimmed.split_once('|').ok_or_else(|| format!("line {line}: expected `<outcome> | <sql>`"))?;
        let mut words = outcome.split_whitespace();
        let expected = match (words.next(), words.next()) {
            (Some("pass"), None) => Expected::Pass,
            (Some("read"), None) => Expected::Read,
            (Some("write"), None) => Expected::Write,
            (Some("reject"), Some(reason)) => Expected::Reject(reason.to_string()),
            _ => return Err(format!("line {line}: unknown outcome `{}`", outcome.trim())),
        };
        let route = route.ok_or_else(|| format!("line {line}: no `@` route line before the first statement"))?;
        entries.push(CorpusEntry { line, route, expected, sql: sql.trim().to_string() });
    }
    Ok(entries)
}
