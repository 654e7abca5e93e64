//! Writers of a migrated (old) table that the proxy never sees as statement text, found in the catalog:
//! foreign keys *from* the table whose ON DELETE / ON UPDATE action writes it, triggers whose function
//! writes it, functions and procedures that write it, writable views over it, rules on it or writing
//! it, and the tables it inherits from or that inherit from it (`inheritance`). Each such write changes the old table without the shadow, and nothing says so until a verify runs.
//!
//! Each finding has an identifier (the contract of `accept_unseen_writers` in the rules file):
//! `fk:<constraint>`, `trigger:<schema>.<table>.<trigger>`, `function:<schema>.<name>(<argument types>)`,
//! `procedure:<schema>.<name>(<argument types>)`, `view:<schema>.<view>`, `rule:<schema>.<table>.<rule>`,
//! `inheritance:<schema>.<table>`, each part quoted as Postgres would need it. Registration refuses a migration with a finding its rules do
//! not accept ([`unaccepted`], called by the state at every start and rules reload); `dualwrite check`
//! prints every finding with what to do ([`check_migration`]). The proxy's own `dualwrite` schema and
//! objects of extensions are skipped. How a body is judged (writes vs reads, on word boundaries) is
//! [`body`]'s.

pub mod body;
mod inheritance;

use std::fmt;
use std::io::Write;

use dualwrite_rules::{quote_ident, Migration, RuleSet, TableName};
use tokio_postgres::GenericClient;

use body::{Target, Use};

/// What kind of object writes the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ForeignKey,
    Trigger,
    Function,
    Procedure,
    View,
    Rule,
    Inheritance,
}

impl Kind {
    /// The identifier prefix (before the colon).
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::ForeignKey => "fk",
            Kind::Trigger => "trigger",
            Kind::Function => "function",
            Kind::Procedure => "procedure",
            Kind::View => "view",
            Kind::Rule => "rule",
            Kind::Inheritance => "inheritance",
        }
    }
}

/// One writer of the old table the proxy cannot see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnseenWriter {
    pub kind: Kind,
    /// What `accept_unseen_writers` lists to accept it, e.g. `fk:users_org_id_fkey`.
    pub id: String,
    /// One line: what it is and how it writes the table.
    pub description: String,
    /// One line: what to do about it.
    pub remedy: String,
}

/// The last words of every remedy: how to live with a writer that stays.
const OR_ACCEPT: &str =
    "or list it in accept_unseen_writers and enable the change-data-capture watch with on_bypass = \"repair\"";

/// The table as the catalog knows it.
struct Table {
    oid: u32,
    target: Target,
    display: String,
}

/// Every unseen writer of `migration`'s old table, or of each old table of a merge (none for a table that
/// does not exist).
pub async fn find(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<UnseenWriter>, tokio_postgres::Error> {
    let mut found = Vec::new();
    for table in migration.old_tables() {
        found.extend(find_of(client, table).await?);
    }
    found.sort_by_key(|w| w.kind);
    Ok(found)
}

/// Every unseen writer of one old table.
async fn find_of(client: &impl GenericClient, table: &TableName) -> Result<Vec<UnseenWriter>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = to_regclass($1)",
            &[&table.qualified().to_string()],
        )
        .await?;
    let Some(row) = row else { return Ok(Vec::new()) };
    let target = Target { schema: row.get(1), name: row.get(2) };
    let display = qualified(&[&target.schema, &target.name]);
    let table = Table { oid: row.get(0), target, display };
    let mut found = foreign_keys(client, &table).await?;
    let views = views(client, &table).await?;
    // A trigger or rule on a writable view over the table is how that view writes it: reported once, as
    // the view.
    let view_names: Vec<String> = views.iter().map(|v| v.id["view:".len()..].to_owned()).collect();
    // (Triggers cloned onto partitions are reported once, as their parent's.)
    found.extend(triggers(client, &table, &view_names).await?);
    found.extend(routines(client, &table).await?);
    found.extend(views);
    found.extend(rules(client, &table, &view_names).await?);
    let relatives = inheritance::relatives(client, table.oid, &table.display, OR_ACCEPT).await?;
    found.extend(relatives.into_iter().map(|r| UnseenWriter {
        kind: Kind::Inheritance,
        id: format!("inheritance:{}", r.name),
        description: r.description,
        remedy: r.remedy,
    }));
    Ok(found)
}

/// `schema.name` (or longer), each part quoted where Postgres needs it.
fn qualified(parts: &[&str]) -> String {
    parts.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join(".")
}

async fn foreign_keys(client: &impl GenericClient, table: &Table) -> Result<Vec<UnseenWriter>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.conname::text, n.nspname::text, p.relname::text, c.confdeltype::text, c.confupdtype::text,
                    c.confrelid = c.conrelid
               FROM pg_constraint c
               JOIN pg_class p ON p.oid = c.confrelid JOIN pg_namespace n ON n.oid = p.relnamespace
              WHERE c.contype = 'f' AND c.conrelid = $1
                AND (c.confdeltype IN ('c', 'n', 'd') OR c.confupdtype IN ('c', 'n', 'd'))
              ORDER BY 1",
            &[&table.oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let parent = qualified(&[row.get(1), row.get(2)]);
            let actions: Vec<String> = [("DELETE", row.get::<_, String>(3)), ("UPDATE", row.get(4))]
                .into_iter()
                .filter_map(|(event, code)| fk_action(&code).map(|action| format!("ON {event} {action}")))
                .collect();
            let self_reference: bool = row.get(5);
            let how = if self_reference {
                format!("deleting or updating a row of {t} also writes the rows of {t} that refer to it, which the statement does not return", t = table.display)
            } else {
                format!("deleting or updating rows of {parent} writes {} without a statement naming it", table.display)
            };
            UnseenWriter {
                kind: Kind::ForeignKey,
                id: format!("fk:{}", quote_ident(&name)),
                description: format!(
                    "foreign key {name} of {} references {parent} {}: {how}",
                    table.display,
                    actions.join(" ")
                ),
                remedy: format!(
                    "change the referring rows of {} through the proxy before the rows of {parent} they refer to, {OR_ACCEPT}",
                    table.display
                ),
            }
        })
        .collect())
}

/// The referential action of a `confdeltype`/`confupdtype` code that writes the referring table.
fn fk_action(code: &str) -> Option<&'static str> {
    match code {
        "c" => Some("CASCADE"),
        "n" => Some("SET NULL"),
        "d" => Some("SET DEFAULT"),
        _ => None,
    }
}

/// A function's body: the SQL-standard body when it has one, else its source.
const BODY: &str = "coalesce(pg_get_function_sqlbody(p.oid), p.prosrc)";

/// Functions of the proxy's own schema and of extensions are not the application's writers.
const NOT_OURS: &str = "pn.nspname NOT IN ('dualwrite', 'pg_catalog', 'information_schema')
    AND l.lanname NOT IN ('c', 'internal')
    AND NOT EXISTS (SELECT 1 FROM pg_depend e
                     WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')";

fn sql_like(language: &str) -> bool {
    matches!(language, "sql" | "plpgsql")
}

async fn triggers(
    client: &impl GenericClient,
    table: &Table,
    skip_relations: &[String],
) -> Result<Vec<UnseenWriter>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, t.tgname::text, pn.nspname::text, p.proname::text,
                l.lanname::text, {BODY}, t.tgenabled = 'D'
           FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
           JOIN pg_language l ON l.oid = p.prolang
          WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND n.nspname <> 'dualwrite' AND {NOT_OURS}
            AND strpos(lower({BODY}), lower($1)) > 0
          ORDER BY 1, 2, 3"
    );
    let rows = client.query(&sql, &[&table.target.name]).await?;
    let mut found = Vec::new();
    for row in rows {
        let relation = qualified(&[row.get(0), row.get(1)]);
        let language: String = row.get(5);
        let Some(usage) = body::writes(row.get(6), &table.target, sql_like(&language)) else { continue };
        if skip_relations.contains(&relation) {
            continue;
        }
        let trigger: String = row.get(2);
        let function = qualified(&[row.get(3), row.get(4)]);
        let disabled = if row.get(7) { " (disabled now)" } else { "" };
        found.push(UnseenWriter {
            kind: Kind::Trigger,
            id: format!("trigger:{relation}.{}", quote_ident(&trigger)),
            description: format!(
                "trigger {trigger} on {relation}{disabled} runs {function}(), which {}",
                usage.describe(&table.display)
            ),
            remedy: format!(
                "make that write from the application through the proxy instead of from the trigger, {OR_ACCEPT}"
            ),
        });
    }
    Ok(found)
}

async fn routines(client: &impl GenericClient, table: &Table) -> Result<Vec<UnseenWriter>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT pn.nspname::text, p.proname::text, oidvectortypes(p.proargtypes), p.prokind = 'p',
                l.lanname::text, {BODY}
           FROM pg_proc p JOIN pg_namespace pn ON pn.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
          WHERE p.prokind IN ('f', 'p') AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
            AND pn.nspname NOT LIKE 'pg\\_%' AND {NOT_OURS}
            AND strpos(lower({BODY}), lower($1)) > 0
          ORDER BY 1, 2, 3"
    );
    let rows = client.query(&sql, &[&table.target.name]).await?;
    let mut found = Vec::new();
    for row in rows {
        let language: String = row.get(4);
        let Some(usage) = body::writes(row.get(5), &table.target, sql_like(&language)) else { continue };
        let (kind, call) = if row.get(3) { (Kind::Procedure, "CALL") } else { (Kind::Function, "SELECT") };
        let name = qualified(&[row.get(0), row.get(1)]);
        let signature = format!("{name}({})", row.get::<_, String>(2));
        found.push(UnseenWriter {
            kind,
            id: format!("{}:{signature}", kind.prefix()),
            description: format!(
                "{} {signature} ({language}) {}: `{call} {name}(...)` writes it unseen",
                kind.prefix(),
                usage.describe(&table.display)
            ),
            remedy: format!("send the statements it runs through the proxy instead of calling it, {OR_ACCEPT}"),
        });
    }
    Ok(found)
}

async fn views(client: &impl GenericClient, table: &Table) -> Result<Vec<UnseenWriter>, tokio_postgres::Error> {
    // Views over the table, directly or through other views (each view's `_RETURN` rule depends on the
    // relations it reads), that accept some write: auto-updatable, INSTEAD OF triggers or INSTEAD rules.
    let rows = client
        .query(
            "WITH RECURSIVE over_table(oid) AS (
                 SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                  WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                    AND d.refobjid = $1 AND r.rulename = '_RETURN' AND r.ev_class <> $1
                 UNION
                 SELECT r.ev_class FROM over_table o
                   JOIN pg_depend d ON d.refobjid = o.oid AND d.classid = 'pg_rewrite'::regclass
                                   AND d.refclassid = 'pg_class'::regclass
                   JOIN pg_rewrite r ON r.oid = d.objid
                  WHERE r.rulename = '_RETURN' AND r.ev_class <> o.oid
             )
             SELECT n.nspname::text, c.relname::text, pg_relation_is_updatable(c.oid, true),
                    EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgtype & 64 <> 0),
                    EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = c.oid AND w.rulename <> '_RETURN')
               FROM over_table o JOIN pg_class c ON c.oid = o.oid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'v' AND n.nspname <> 'dualwrite' AND pg_relation_is_updatable(c.oid, true) <> 0
              ORDER BY 1, 2",
            &[&table.oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let view = qualified(&[row.get(0), row.get(1)]);
            let events: i32 = row.get(2);
            // Bits of pg_relation_is_updatable: 1 << CMD_UPDATE, CMD_INSERT, CMD_DELETE.
            let accepts: Vec<&str> = [(8, "INSERT"), (4, "UPDATE"), (16, "DELETE")]
                .into_iter()
                .filter(|(bit, _)| events & bit != 0)
                .map(|(_, event)| event)
                .collect();
            let how = match (row.get::<_, bool>(3), row.get::<_, bool>(4)) {
                (true, _) => "through INSTEAD OF triggers",
                (false, true) => "through rules",
                (false, false) => "auto-updatable",
            };
            UnseenWriter {
                kind: Kind::View,
                id: format!("view:{view}"),
                description: format!(
                    "view {view} over {} accepts {} ({how}): a write to the view writes {} without naming it",
                    table.display,
                    accepts.join(", "),
                    table.display
                ),
                remedy: format!(
                    "write {} by its own name through the proxy (and REVOKE INSERT, UPDATE, DELETE on {view}), {OR_ACCEPT}",
                    table.display
                ),
            }
        })
        .collect())
}

async fn rules(
    client: &impl GenericClient,
    table: &Table,
    skip_relations: &[String],
) -> Result<Vec<UnseenWriter>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, r.rulename::text, r.ev_class = $1, pg_get_ruledef(r.oid),
                    CASE r.ev_type WHEN '1' THEN 'SELECT' WHEN '2' THEN 'UPDATE' WHEN '3' THEN 'INSERT'
                                   ELSE 'DELETE' END
               FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE r.rulename <> '_RETURN' AND n.nspname <> 'dualwrite'
                AND (r.ev_class = $1 OR EXISTS (
                        SELECT 1 FROM pg_depend d
                         WHERE d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                           AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $1))
              ORDER BY 1, 2, 3",
            &[&table.oid],
        )
        .await?;
    let mut found = Vec::new();
    for row in rows {
        let relation = qualified(&[row.get(0), row.get(1)]);
        let rule: String = row.get(2);
        let event: String = row.get(5);
        let id = format!("rule:{relation}.{}", quote_ident(&rule));
        if row.get(3) {
            found.push(UnseenWriter {
                kind: Kind::Rule,
                id,
                description: format!(
                    "rule {rule} on {relation} (ON {event}): a DO INSTEAD rule sends the write elsewhere, and Postgres refuses DO ALSO and conditional rules inside the proxy's dual-write WITH"
                ),
                remedy: format!("drop the rule and do its work in the application through the proxy, {OR_ACCEPT}"),
            });
            continue;
        }
        // A rule elsewhere that only reads the table is no writer of it.
        let Some(Use::Writes(verb)) = body::writes(row.get(4), &table.target, true) else { continue };
        if skip_relations.contains(&relation) {
            continue;
        }
        found.push(UnseenWriter {
            kind: Kind::Rule,
            id,
            description: format!(
                "rule {rule} on {relation} (ON {event}) runs {verb} on {}: a write to {relation} writes {} without naming it",
                table.display, table.display
            ),
            remedy: format!("write {} through the proxy instead of through {relation}, {OR_ACCEPT}", table.display),
        });
    }
    Ok(found)
}

/// A migration whose old table has writers its rules do not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unaccepted {
    pub migration: String,
    pub table: String,
    /// The writers not accepted.
    pub writers: Vec<UnseenWriter>,
    /// What `accept_unseen_writers` must list to accept every writer found (accepted ones included).
    pub accept_all: Vec<String>,
}

/// Registration refused: one or more migrations with unaccepted unseen writers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refusal(pub Vec<Unaccepted>);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(
                f,
                "migration `{}` cannot be registered: {} writer(s) of {} that the proxy cannot see:",
                m.migration,
                m.writers.len(),
                m.table
            )?;
            for w in &m.writers {
                writeln!(f, "  {}: {}", w.id, w.description)?;
                writeln!(f, "    what to do: {}", w.remedy)?;
            }
            let list: Vec<String> = m.accept_all.iter().map(|id| format!("{id:?}")).collect();
            write!(
                f,
                "  to accept them, add to migration `{}` in the rules file: accept_unseen_writers = [{}]",
                m.migration,
                list.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The migrations of `rules` with writers their `accept_unseen_writers` does not list. Writers that are
/// accepted are logged (WARN) each time, so the log says what runs unseen.
pub async fn unaccepted(
    client: &impl GenericClient,
    rules: &RuleSet,
) -> Result<Vec<Unaccepted>, tokio_postgres::Error> {
    let mut refused = Vec::new();
    for migration in &rules.migrations {
        let writers = find(client, migration).await?;
        let accept_all: Vec<String> = writers.iter().map(|w| w.id.clone()).collect();
        let (accepted, open): (Vec<UnseenWriter>, Vec<UnseenWriter>) =
            writers.into_iter().partition(|w| migration.accept_unseen_writers.contains(&w.id));
        for w in &accepted {
            tracing::warn!(migration = %migration.name, writer = %w.id, "accepted unseen writer: {}", w.description);
        }
        if !open.is_empty() {
            refused.push(Unaccepted {
                migration: migration.name.clone(),
                table: migration.old_tables().iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
                writers: open,
                accept_all,
            });
        }
    }
    Ok(refused)
}

/// `dualwrite check`'s section for one migration: each finding with what to do (an error unless accepted),
/// and accepted identifiers the catalog no longer shows.
pub async fn check_migration(
    client: &impl GenericClient,
    migration: &Migration,
    out: &mut dyn Write,
) -> anyhow::Result<super::schema::Tally> {
    let mut report = super::schema::Report::new(out);
    let writers = find(client, migration).await?;
    if writers.is_empty() {
        let tables = migration.old_tables().iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
        report.ok(&format!("no writers of {tables} that the proxy cannot see"))?;
    }
    for w in &writers {
        let accepted = migration.accept_unseen_writers.contains(&w.id);
        let line = format!("unseen writer {}: {}", w.id, w.description);
        if accepted {
            report.accepted(&line)?;
        } else {
            report.error(&line)?;
            report.detail(&format!("what to do: {}", w.remedy))?;
        }
    }
    for id in &migration.accept_unseen_writers {
        if !writers.iter().any(|w| &w.id == id) {
            report.note(&format!("accept_unseen_writers lists {id}, which the catalog does not show (stale?)"))?;
        }
    }
    for reference in inbound_foreign_keys(client, migration).await? {
        report.note(&reference)?;
    }
    let open: Vec<String> = writers
        .iter()
        .filter(|w| !migration.accept_unseen_writers.contains(&w.id))
        .map(|w| format!("{:?}", w.id))
        .collect();
    if !open.is_empty() {
        let all: Vec<String> = writers.iter().map(|w| format!("{:?}", w.id)).collect();
        report.detail(&format!(
            "the proxy refuses to register this migration; to accept them: accept_unseen_writers = [{}]",
            all.join(", ")
        ))?;
    }
    Ok(report.tally)
}

/// Foreign keys of other tables into the old table: no unseen writers of it (they write the other table),
/// but they must point at the shadow before `complete`, when the old table stops being written.
async fn inbound_foreign_keys(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.conname::text, n.nspname::text, r.relname::text
               FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
              WHERE c.contype = 'f' AND c.confrelid = to_regclass($1) AND c.conrelid <> c.confrelid
              ORDER BY 2, 3, 1",
            &[&migration.table.qualified().to_string()],
        )
        .await?;
    // A split's targets each hold the key: any of them can take the reference.
    let shadows = migration.shadow_tables().iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let shadow = match shadows.as_slice() {
        [one] => one.clone(),
        many => format!("one of {}", many.join(", ")),
    };
    Ok(rows
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            format!(
                "foreign key {name} of {} references {}: point it at {shadow} before `complete` (then only the shadow is written)",
                qualified(&[row.get(1), row.get(2)]),
                migration.table,
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn every_kind_is_one_the_rules_accept() {
        for kind in [
            Kind::ForeignKey,
            Kind::Trigger,
            Kind::Function,
            Kind::Procedure,
            Kind::View,
            Kind::Rule,
            Kind::Inheritance,
        ] {
            assert!(dualwrite_rules::model::UNSEEN_WRITER_KINDS.contains(&kind.prefix()), "{kind:?}");
        }
    }
}
