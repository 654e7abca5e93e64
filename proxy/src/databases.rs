//! Which database each migration belongs to. A migration names its database in the rules (`database`), else
//! it lives in the database of the upstream URL. Everything of a migration happens in that one database:
//! the sessions it rewrites (those whose startup packet names that database), its state (the `dualwrite`
//! schema there), its backfill, verify, figures and shadow reads. This module splits a rules file by
//! database and points a control-plane connection at a migration's database.

use std::collections::BTreeMap;
use std::sync::Arc;

use dualwrite_rules::{Migration, RuleSet};

use crate::pg_client::PgTarget;

/// The migrations of one database, each with its `database` filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseRules {
    pub database: String,
    pub rules: Arc<RuleSet>,
}

/// Splits `rules` by database, in database-name order. `default` is the database of migrations that name
/// none (the upstream URL's); each part is validated again on its own, which catches a table used by a
/// migration without `database` and by one naming the same database explicitly.
pub fn split(rules: &RuleSet, default: Option<&str>, origin: &str) -> anyhow::Result<Vec<DatabaseRules>> {
    let mut by_database: BTreeMap<String, Vec<Migration>> = BTreeMap::new();
    for m in &rules.migrations {
        let database = database_of(m, default)?;
        let resolved = Migration { database: Some(database.to_owned()), ..m.clone() };
        by_database.entry(database.to_owned()).or_default().push(resolved);
    }
    by_database
        .into_iter()
        .map(|(database, migrations)| {
            let rules = Arc::new(RuleSet::new(migrations, origin)?);
            Ok(DatabaseRules { database, rules })
        })
        .collect()
}

/// The database of `m`, given the default for migrations that name none.
pub fn database_of<'a>(m: &'a Migration, default: Option<&'a str>) -> anyhow::Result<&'a str> {
    m.database.as_deref().or(default).ok_or_else(|| {
        anyhow::anyhow!(
            "migration `{}` names no `database` and the upstream URL names none (nor a user): set `database` in \
             the rules",
            m.name
        )
    })
}

/// A connection like `pg` (server, credentials, TLS) to the database of `m`: the URL's own database for a
/// migration that names none.
pub fn target_for(pg: &PgTarget, m: &Migration) -> PgTarget {
    match &m.database {
        Some(database) => pg.with_database(database),
        None => pg.clone(),
    }
}

/// `names` as `"a", "b"` for messages.
pub fn quoted_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `users` migrated in the default database (`app_users`) and in `crm` (`crm_users`).
    fn two() -> RuleSet {
        let migration = |name: &str, database: &str| {
            format!(
                "[[migration]]\nname = \"{name}\"\n{database}table = \"users\"\nshadow = \"users_v2\"\nkey = [\"id\"]\n\
                 versions = {{ old = \"v1\", new = \"v2\" }}\nforward = {{ id = \"id\" }}\nbackward = {{ id = \"id\" }}\n"
            )
        };
        let text = format!("{}{}", migration("app_users", ""), migration("crm_users", "database = \"crm\"\n"));
        RuleSet::from_toml(&text, "r").unwrap()
    }

    #[test]
    fn splits_by_database_with_the_default_filled_in() {
        let rules = two();
        let parts = split(&rules, Some("app"), "r").unwrap();
        let summary: Vec<_> = parts
            .iter()
            .map(|p| {
                let m = &p.rules.migrations[0];
                (p.database.as_str(), p.rules.migrations.len(), m.name.as_str(), m.database.as_deref())
            })
            .collect();
        assert_eq!(summary, [("app", 1, "app_users", Some("app")), ("crm", 1, "crm_users", Some("crm"))]);
    }

    #[test]
    fn the_same_table_in_the_default_database_twice_is_refused() {
        let rules = two();
        let error = split(&rules, Some("crm"), "r").unwrap_err().to_string();
        assert!(error.contains("`users` is already used by migration"), "{error}");
    }

    #[test]
    fn no_default_database_is_an_error_only_for_migrations_that_need_it() {
        let rules = two();
        let error = split(&rules, None, "r").unwrap_err().to_string();
        assert!(error.contains("migration `app_users` names no `database`"), "{error}");
        let crm_only = RuleSet::new(rules.migrations[1..].to_vec(), "r").unwrap();
        assert_eq!(split(&crm_only, None, "r").unwrap()[0].database, "crm");
    }
}
