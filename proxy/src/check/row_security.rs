//! Row-level security of a migration's tables. A session's statements reach the shadow as well as the old
//! table: a v2 session reads and writes the shadow, a `ROUTE ... READS TO v2` sends v1 reads there, and in
//! `cutover` every write's primary is the shadow. Policies are per table, and `CREATE TABLE ... (LIKE ...)`
//! copies none, so a shadow made beside an old table under row-level security is open: a tenant's v2
//! `UPDATE users SET ...` without a tenant filter changes every tenant's shadow rows, and its reads see them.
//!
//! So where an old table has row-level security enabled (or forced, which also binds the owner), every
//! shadow must have it enabled (forced) as well, and must have policies of its own if the old table has any
//! (enabled without policies, it would hide every row and refuse every synced row). What the policies say
//! is the operator's to keep equivalent (they are written over different columns); the flags and the
//! presence of policies are what the catalog can hold to. Registration refuses a migration that breaks
//! this, and the schema watch refuses its writes when it appears later (kind `row_security`); reads are not
//! refused by the watch, so the finding's alert is critical.

use dualwrite_rules::{Migration, TableName};
use tokio_postgres::GenericClient;

/// What the catalog says of one table's row-level security.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RowSecurity {
    table: String,
    enabled: bool,
    forced: bool,
    policies: i64,
}

/// Each way a shadow of `migration` is more open than its old tables, as a sentence with what to do (tables
/// that do not exist are skipped).
pub async fn findings(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut olds = Vec::new();
    for table in migration.old_tables() {
        olds.extend(row_security(client, table).await?);
    }
    let mut shadows = Vec::new();
    for table in migration.shadow_tables() {
        shadows.extend(row_security(client, table).await?);
    }
    Ok(judge(&olds, &shadows))
}

async fn row_security(
    client: &impl GenericClient,
    table: &TableName,
) -> Result<Option<RowSecurity>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT c.relrowsecurity, c.relforcerowsecurity,
                    (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)
               FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&table.qualified().to_string()],
        )
        .await?;
    Ok(row.map(|r| RowSecurity { table: table.to_string(), enabled: r.get(0), forced: r.get(1), policies: r.get(2) }))
}

fn judge(olds: &[RowSecurity], shadows: &[RowSecurity]) -> Vec<String> {
    let mut found = Vec::new();
    let Some(secured) = olds.iter().find(|o| o.enabled) else { return found };
    let forced = olds.iter().find(|o| o.enabled && o.forced);
    let with_policies = olds.iter().find(|o| o.enabled && o.policies > 0);
    for shadow in shadows {
        let table = &shadow.table;
        let v2 = "v2 sessions (and every session's writes in cutover) would read and change every row of it";
        if !shadow.enabled {
            found.push(format!(
                "row-level security is enabled on {} ({}) but not on the shadow {table}: {v2}; run \
                 ALTER TABLE {table} ENABLE ROW LEVEL SECURITY and create its policies",
                secured.table,
                policies(secured.policies)
            ));
            continue;
        }
        if let Some(old) = forced.filter(|_| !shadow.forced) {
            found.push(format!(
                "row-level security is forced on {} but not on the shadow {table}: its owner's v2 sessions (and \
                 its writes in cutover) would read and change every row of it; run ALTER TABLE {table} FORCE \
                 ROW LEVEL SECURITY",
                old.table
            ));
        }
        if let Some(old) = with_policies.filter(|_| shadow.policies == 0) {
            found.push(format!(
                "the shadow {table} has row-level security but no policies while {} has {}: it would hide every \
                 row from v2 sessions and refuse every row the dual write syncs into it; create its policies",
                old.table,
                policies(old.policies)
            ));
        }
    }
    found
}

fn policies(count: i64) -> String {
    match count {
        1 => "1 policy".to_owned(),
        n => format!("{n} policies"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(table: &str, enabled: bool, forced: bool, policies: i64) -> RowSecurity {
        RowSecurity { table: table.into(), enabled, forced, policies }
    }

    #[test]
    fn a_shadow_without_the_old_tables_row_security_is_found_with_the_statement_that_enables_it() {
        let found = judge(&[table("public.users", true, false, 2)], &[table("public.users_v2", false, false, 0)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "row-level security is enabled on public.users (2 policies) but not on the shadow public.users_v2"
            ) && found[0].contains("ALTER TABLE public.users_v2 ENABLE ROW LEVEL SECURITY"),
            "{found:?}"
        );
    }

    #[test]
    fn force_and_policies_must_follow_too() {
        let old = table("public.users", true, true, 1);
        let found = judge(std::slice::from_ref(&old), &[table("public.users_v2", true, false, 0)]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("FORCE ROW LEVEL SECURITY") && found[1].contains("no policies"), "{found:?}");
        assert_eq!(judge(&[old], &[table("public.users_v2", true, true, 3)]), Vec::<String>::new());
    }

    #[test]
    fn an_old_table_without_row_security_asks_nothing_of_the_shadow_and_a_merge_asks_it_of_each_shadow() {
        let open = table("public.users", false, false, 0);
        assert_eq!(
            judge(std::slice::from_ref(&open), &[table("public.users_v2", false, false, 0)]),
            Vec::<String>::new()
        );
        // Policies on a table whose row-level security is off bind nothing.
        assert_eq!(
            judge(&[table("public.users", false, true, 4)], &[table("s", false, false, 0)]),
            Vec::<String>::new()
        );
        let found = judge(
            &[open, table("public.profiles", true, false, 1)],
            &[table("public.accounts", true, false, 1), table("public.details", false, false, 0)],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("enabled on public.profiles (1 policy) but not on the shadow public.details"));
    }
}
