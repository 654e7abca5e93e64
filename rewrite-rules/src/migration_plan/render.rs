//! The two files a plan is written as: the shadow's DDL script (one statement per step, `;`-terminated,
//! read back by [`super::parse_script`]) and the rules file of the migration (the format
//! [`crate::RuleSet::from_toml`] reads), each under a header of `--` / `#` comment lines.

use super::{DdlStep, MigrationPlan};
use crate::model::Migration;

/// The DDL script: `header` lines as comments, then each step.
pub fn ddl_script(plan: &MigrationPlan, header: &[String]) -> String {
    let mut out = String::new();
    for line in header {
        out.push_str(&format!("-- {line}\n"));
    }
    for step in &plan.ddl {
        let note = match step {
            DdlStep::CreateIndex { .. } => Some("built CONCURRENTLY: outside any transaction"),
            DdlStep::AddConstraint { .. } => Some("NOT VALID: checked for new rows at once, for old rows below"),
            _ => None,
        };
        out.push('\n');
        if let Some(note) = note {
            out.push_str(&format!("-- {note}\n"));
        }
        out.push_str(step.sql());
        out.push_str(";\n");
    }
    out
}

/// The rules file holding `migration`, with `header` lines as comments.
pub fn rules_toml(migration: &Migration, header: &[String]) -> String {
    let mut out = String::new();
    for line in header {
        out.push_str(&format!("# {line}\n"));
    }
    let list = |items: &[String]| items.iter().map(|s| string(s)).collect::<Vec<_>>().join(", ");
    out.push_str("[[migration]]\n");
    out.push_str(&format!("name = {}\n", string(&migration.name)));
    if let Some(database) = &migration.database {
        out.push_str(&format!("database = {}\n", string(database)));
    }
    out.push_str(&format!("table = {}\n", string(&migration.table.to_string())));
    out.push_str(&format!("shadow = {}\n", string(&migration.shadow.to_string())));
    out.push_str(&format!("key = [{}]\n", list(&migration.key)));
    out.push_str(&format!(
        "versions = {{ old = {}, new = {} }}\n",
        string(&migration.versions.old),
        string(&migration.versions.new)
    ));
    for (title, mapping) in [("forward", &migration.forward), ("backward", &migration.backward)] {
        out.push_str(&format!("\n[migration.{title}]\n"));
        for (column, expression) in mapping {
            out.push_str(&format!("{} = {}\n", key(column), string(expression)));
        }
    }
    out
}

/// A TOML basic string with every character TOML needs escaped.
fn string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A TOML key: bare when TOML allows it, quoted otherwise.
fn key(text: &str) -> String {
    let bare = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        text.to_string()
    } else {
        string(text)
    }
}
