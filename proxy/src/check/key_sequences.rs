//! Where a migration's key values come from when an INSERT leaves them out: the sequences behind each key
//! column's default, in the old table (every source of a merge) and every shadow.
//!
//! Rows inserted without a key take it from the default of the table the statement names: a v1 session's
//! from the old table, a v2 session's from the shadow, a merge source's from that source. The other tables
//! get the same key from the dual write, which upserts on it. With two sequences both hand out the same
//! values, and an upsert on the key then overwrites an unrelated row that holds it (a v2 INSERT rewrites the
//! name of the v1 row with that key in the old table, the rollback target). Moving every sequence past the
//! largest key at cutover does not help: both go on handing out the same next values. So a migration whose
//! key draws from more than one sequence is refused at registration ([`refusals`], called by the state at
//! every start and rules reload) and is an error of `dualwrite check` ([`findings`]). A table whose key has
//! no default (the application supplies keys) is no concern, nor is one default that draws from no sequence
//! (e.g. `gen_random_uuid()`).

use std::fmt;

use dualwrite_rules::{quote_ident, quote_literal, Migration, RuleSet};
use tokio_postgres::GenericClient;

/// One table's key column and the sequences its default draws from (schema-qualified, so that the control
/// connection's `search_path` does not matter).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Drawn {
    /// The table as the rules spell it.
    table: String,
    sequences: Vec<String>,
    /// An identity column: its default cannot be replaced before `DROP IDENTITY`.
    identity: bool,
}

/// A key column whose defaults draw from more than one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeparateSequences {
    pub column: String,
    /// Every table of the migration whose key column draws from a sequence, the old table's first.
    drawn: Vec<Drawn>,
}

impl SeparateSequences {
    /// The sequence to keep: the first table's (the old table's, or a merge's first source's).
    fn keep(&self) -> &str {
        &self.drawn[0].sequences[0]
    }

    /// How many distinct sequences the key draws from.
    fn count(&self) -> usize {
        distinct(&self.drawn).len()
    }

    /// The statements that make every other table's default draw from [`Self::keep`].
    fn remedy(&self) -> Vec<String> {
        let keep = self.keep();
        let column = quote_ident(&self.column);
        self.drawn
            .iter()
            .filter(|d| d.sequences != [keep])
            .map(|d| {
                let set = format!(
                    "ALTER TABLE {} ALTER COLUMN {column} SET DEFAULT nextval({})",
                    d.table,
                    quote_literal(keep)
                );
                if d.identity {
                    format!("ALTER TABLE {} ALTER COLUMN {column} DROP IDENTITY; {set}", d.table)
                } else {
                    set
                }
            })
            .collect()
    }
}

impl fmt::Display for SeparateSequences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let each: Vec<String> =
            self.drawn.iter().map(|d| format!("{} from {}", d.table, d.sequences.join(" and "))).collect();
        write!(
            f,
            "key column {} draws from {} sequences ({}): rows inserted through different tables without a key \
             take the same values, and the dual write's upsert on the key then overwrites an unrelated row; make \
             every default draw from one ({}), or drop the other defaults where the application always supplies \
             keys",
            self.column,
            self.count(),
            each.join("; "),
            self.remedy().join("; "),
        )
    }
}

/// What `dualwrite check` says of one key column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Every default draws from this one sequence.
    OneSequence {
        column: String,
        sequence: String,
    },
    Separate(SeparateSequences),
}

impl Finding {
    pub fn column(&self) -> &str {
        match self {
            Finding::OneSequence { column, .. } => column,
            Finding::Separate(separate) => &separate.column,
        }
    }

    /// Every sequence the column's defaults draw from.
    pub fn sequences(&self) -> Vec<&str> {
        match self {
            Finding::OneSequence { sequence, .. } => vec![sequence.as_str()],
            Finding::Separate(separate) => distinct(&separate.drawn),
        }
    }
}

/// Every sequence of `drawn`, once each, sorted.
fn distinct(drawn: &[Drawn]) -> Vec<&str> {
    let mut all: Vec<&str> = drawn.iter().flat_map(|d| &d.sequences).map(String::as_str).collect();
    all.sort();
    all.dedup();
    all
}

/// What each key column of `migration` draws from (nothing for a column no table's default draws a sequence
/// for; tables that do not exist are skipped).
pub async fn findings(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let tables: Vec<String> =
        migration.old_tables().into_iter().chain(migration.shadow_tables()).map(|t| t.to_string()).collect();
    let mut found = Vec::new();
    for column in &migration.key {
        let mut drawn = Vec::new();
        for table in &tables {
            // An identity column's sequence, and any a DEFAULT's nextval() depends on (a serial's too). A
            // sequence the column merely owns (a serial whose default was dropped) hands out nothing.
            let row = client
                .query_opt(
                    "SELECT a.attidentity <> '',
                            ARRAY(SELECT DISTINCT format('%I.%I', n.nspname, s.relname)
                                    FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
                                   WHERE s.relkind = 'S'
                                     AND ((a.attidentity <> ''
                                           AND s.oid IN (SELECT d.objid FROM pg_depend d
                                                          WHERE d.classid = 'pg_class'::regclass
                                                            AND d.refclassid = 'pg_class'::regclass
                                                            AND d.refobjid = a.attrelid
                                                            AND d.refobjsubid = a.attnum
                                                            AND d.deptype = 'i'))
                                          OR s.oid IN (SELECT d.refobjid
                                                         FROM pg_attrdef ad
                                                         JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass
                                                                         AND d.objid = ad.oid
                                                                         AND d.refclassid = 'pg_class'::regclass
                                                        WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum))
                                   ORDER BY 1)
                       FROM pg_attribute a
                      WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                    &[table, column],
                )
                .await?;
            let Some(row) = row else { continue };
            let sequences: Vec<String> = row.get(1);
            if !sequences.is_empty() {
                drawn.push(Drawn { table: table.clone(), sequences, identity: row.get(0) });
            }
        }
        found.push(match distinct(&drawn)[..] {
            [] => continue,
            [sequence] => Finding::OneSequence { column: column.clone(), sequence: sequence.to_owned() },
            _ => Finding::Separate(SeparateSequences { column: column.clone(), drawn }),
        });
    }
    Ok(found)
}

/// One line per key column of a migration of `rules` that draws from more than one sequence: why the
/// migration cannot be registered and what to do.
pub async fn refusals(client: &impl GenericClient, rules: &RuleSet) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut refused = Vec::new();
    for migration in &rules.migrations {
        for finding in findings(client, migration).await? {
            if let Finding::Separate(separate) = finding {
                refused.push(format!("migration `{}` cannot be registered: {separate}", migration.name));
            }
        }
    }
    Ok(refused)
}
