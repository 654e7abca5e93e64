//! Where a migration's key values come from when an INSERT leaves them out: the default of each key column in
//! the old table (every source of a merge) and every shadow, and whether those defaults can hand two tables
//! the same value.
//!
//! Rows inserted without a key take it from the default of the table the statement names: a v1 session's
//! from the old table, a v2 session's from the shadow, a merge source's from that source. The other tables
//! get the same key from the dual write, which upserts on it. With two independent defaults (two sequences, a
//! sequence and a function, two constants) both hand out the same values, and an upsert on the key then
//! overwrites an unrelated row that holds it (a v2 INSERT rewrites the v1 row with that key in the old table,
//! the rollback target). Within one table the same clash is a unique violation; across tables the upsert makes
//! it silent. Moving every sequence past the largest key at cutover does not help: both go on handing out the
//! same next values. So a migration whose key defaults can repeat each other's values is refused at
//! registration ([`refusals`], called by the state at every start and rules reload) and is an error of
//! `dualwrite check` ([`findings`]).
//!
//! Defaults that cannot repeat each other's values: one sequence behind every default (serial, identity,
//! `DEFAULT nextval()`), random UUIDs (`gen_random_uuid()`, uuid-ossp's generators), or the same call of one
//! function of the database's own in every table (`DEFAULT next_id()`: one function, so one state; which
//! sequences it draws from is in its body, which the catalog does not record). A key with one default in one
//! table is no concern (every other table gets its values from the dual write), nor is one without any (the
//! application supplies keys).

use std::fmt;

use dualwrite_rules::{quote_ident, quote_literal, Migration, RuleSet, TableName};
use tokio_postgres::GenericClient;

/// Where one table's key column takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The sequences the default draws from (an identity's, a serial's, any a `nextval()` names), each
    /// schema-qualified so that the control connection's `search_path` does not matter.
    Sequences(Vec<String>),
    /// A random UUID generator: no other such default repeats its values.
    RandomUuid,
    /// Functions of the database's own and no sequence (`next_id()`): the same call in every table is one
    /// source.
    Function,
    /// Anything else (a constant, `random()`): another default may repeat its values.
    Expression,
}

/// One table's key column with a default.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyDefault {
    /// The table as the rules spell it.
    table: String,
    source: Source,
    /// The default as the catalog prints it (`nextval('...')` for an identity column).
    expression: String,
    /// An identity column: its default cannot be replaced before `DROP IDENTITY`.
    identity: bool,
}

impl KeyDefault {
    /// The default another table must have to draw from the same source.
    fn shared(&self) -> String {
        match &self.source {
            Source::Sequences(sequences) => format!("nextval({})", quote_literal(&sequences[0])),
            _ => self.expression.clone(),
        }
    }

    fn described(&self) -> String {
        match &self.source {
            Source::Sequences(sequences) => sequences.join(" and "),
            _ => self.expression.clone(),
        }
    }
}

/// A key column whose defaults can hand two tables the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeparateSources {
    pub column: String,
    /// Every table of the migration whose key column has a default, the old table's first.
    defaults: Vec<KeyDefault>,
}

impl SeparateSources {
    /// The statements that give every other table the first table's default (the old table's, or a merge's
    /// first source's).
    fn remedy(&self) -> Vec<String> {
        let keep = self.defaults[0].shared();
        let column = quote_ident(&self.column);
        self.defaults
            .iter()
            .filter(|d| d.shared() != keep)
            .map(|d| {
                let set = format!("ALTER TABLE {} ALTER COLUMN {column} SET DEFAULT {keep}", d.table);
                if d.identity {
                    format!("ALTER TABLE {} ALTER COLUMN {column} DROP IDENTITY; {set}", d.table)
                } else {
                    set
                }
            })
            .collect()
    }
}

impl fmt::Display for SeparateSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let each: Vec<String> = self.defaults.iter().map(|d| format!("{} from {}", d.table, d.described())).collect();
        let sequences = distinct_sequences(&self.defaults);
        if self.defaults.iter().all(|d| matches!(d.source, Source::Sequences(_))) {
            write!(f, "key column {} draws from {} sequences", self.column, sequences.len())?;
        } else {
            write!(f, "key column {} takes its default from {} separate sources", self.column, self.defaults.len())?;
        }
        write!(
            f,
            " ({}): rows inserted through different tables without a key can take the same values, and the dual \
             write's upsert on the key then overwrites an unrelated row; make every default draw from one ({}), \
             or drop the other defaults where the application always supplies keys",
            each.join("; "),
            self.remedy().join("; "),
        )
    }
}

/// What `dualwrite check` says of one key column with at least one default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The defaults cannot repeat each other's values; `described` says why, e.g. "one sequence
    /// (public.users_id_seq)".
    OneSource {
        column: String,
        described: String,
        sequences: Vec<String>,
    },
    Separate(SeparateSources),
}

impl Finding {
    pub fn column(&self) -> &str {
        match self {
            Finding::OneSource { column, .. } => column,
            Finding::Separate(separate) => &separate.column,
        }
    }

    /// Every sequence the column's defaults draw from.
    pub fn sequences(&self) -> Vec<&str> {
        match self {
            Finding::OneSource { sequences, .. } => sequences.iter().map(String::as_str).collect(),
            Finding::Separate(separate) => distinct_sequences(&separate.defaults),
        }
    }
}

/// Every sequence of `defaults`, once each, sorted.
fn distinct_sequences(defaults: &[KeyDefault]) -> Vec<&str> {
    let mut all: Vec<&str> = defaults
        .iter()
        .flat_map(|d| match &d.source {
            Source::Sequences(sequences) => sequences.as_slice(),
            _ => &[],
        })
        .map(String::as_str)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Whether `defaults` (one key column's, in every table that has one) can repeat each other's values.
fn judge(column: &str, defaults: Vec<KeyDefault>) -> Option<Finding> {
    let first = defaults.first()?;
    let sequences: Vec<String> = distinct_sequences(&defaults).into_iter().map(str::to_owned).collect();
    let one_source = |described: String| {
        Some(Finding::OneSource { column: column.to_owned(), described, sequences: sequences.clone() })
    };
    if defaults.iter().all(|d| matches!(d.source, Source::Sequences(_))) && sequences.len() == 1 {
        return one_source(format!("one sequence ({})", sequences[0]));
    }
    if defaults.iter().all(|d| d.source == Source::RandomUuid) {
        let calls: Vec<&str> = defaults.iter().map(|d| d.expression.as_str()).collect();
        return one_source(format!("random UUIDs ({})", calls.join(", ")));
    }
    if defaults.iter().all(|d| d.source == Source::Function && d.expression == first.expression) {
        return one_source(format!("one function, the same call in every table ({})", first.expression));
    }
    if let [only] = &defaults[..] {
        return one_source(format!("one table's default only ({}: {})", only.table, only.expression));
    }
    Some(Finding::Separate(SeparateSources { column: column.to_owned(), defaults }))
}

/// uuid-ossp's generators whose values no other generator repeats (v3 and v5 are derived from their input).
const UUID_OSSP_RANDOM: [&str; 3] = ["uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4"];

/// Sorts one default by what the catalog records of it: the sequences and the functions of the database's own
/// (built-in functions are pinned, so never recorded) its expression depends on.
fn source(sequences: Vec<String>, functions: &[(String, Option<String>)], expression: &str) -> Source {
    if !sequences.is_empty() {
        return Source::Sequences(sequences);
    }
    let called = |name: &str| expression == format!("{name}()") || expression.ends_with(&format!(".{name}()"));
    match functions {
        [] if expression == "gen_random_uuid()" => Source::RandomUuid,
        [] => Source::Expression,
        [(name, Some(extension))]
            if extension == "uuid-ossp" && UUID_OSSP_RANDOM.contains(&name.as_str()) && called(name) =>
        {
            Source::RandomUuid
        }
        _ => Source::Function,
    }
}

/// What each key column of `migration` with a default draws from (tables that do not exist are skipped).
pub async fn findings(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let tables: Vec<&TableName> = migration.old_tables().into_iter().chain(migration.shadow_tables()).collect();
    let mut found = Vec::new();
    for column in &migration.key {
        let mut defaults = Vec::new();
        for table in &tables {
            let (display, qualified) = (table.to_string(), table.qualified().to_string());
            // An identity column's sequence, and any a DEFAULT's nextval() depends on (a serial's too). A
            // sequence the column merely owns (a serial whose default was dropped) hands out nothing. The
            // functions a DEFAULT calls, with the extension each belongs to (two arrays in one order). A generated column's expression
            // (also in pg_attrdef) is no default: an INSERT cannot supply the key, nor leave it to chance.
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
                                                         FROM pg_depend d
                                                        WHERE d.classid = 'pg_attrdef'::regclass
                                                          AND d.objid = ad.oid
                                                          AND d.refclassid = 'pg_class'::regclass))
                                   ORDER BY 1),
                            ARRAY(SELECT p.proname::text
                                    FROM pg_depend d JOIN pg_proc p ON p.oid = d.refobjid
                                   WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                                     AND d.refclassid = 'pg_proc'::regclass
                                   ORDER BY p.oid),
                            ARRAY(SELECT coalesce(x.extname::text, '')
                                    FROM pg_depend d JOIN pg_proc p ON p.oid = d.refobjid
                                    LEFT JOIN pg_depend e ON e.classid = 'pg_proc'::regclass AND e.objid = p.oid
                                                         AND e.refclassid = 'pg_extension'::regclass
                                                         AND e.deptype = 'e'
                                    LEFT JOIN pg_extension x ON x.oid = e.refobjid
                                   WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                                     AND d.refclassid = 'pg_proc'::regclass
                                   ORDER BY p.oid),
                            pg_get_expr(ad.adbin, ad.adrelid)
                       FROM pg_attribute a
                       LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                                              AND a.attgenerated = ''
                      WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&qualified, column],
                )
                .await?;
            let Some(row) = row else { continue };
            let identity: bool = row.get(0);
            let sequences: Vec<String> = row.get(1);
            let names: Vec<String> = row.get(2);
            let extensions: Vec<String> = row.get(3);
            let functions: Vec<(String, Option<String>)> = names
                .into_iter()
                .zip(extensions)
                .map(|(name, extension)| (name, Some(extension).filter(|e| !e.is_empty())))
                .collect();
            let expression = match row.get::<_, Option<String>>(4) {
                Some(expression) => expression,
                None => match sequences.first() {
                    Some(sequence) if identity => format!("nextval({})", quote_literal(sequence)),
                    _ => continue,
                },
            };
            let source = source(sequences, &functions, &expression);
            defaults.push(KeyDefault { table: display, source, expression, identity });
        }
        found.extend(judge(column, defaults));
    }
    Ok(found)
}

/// One line per key column of a migration of `rules` whose defaults can repeat each other's values: why the
/// migration cannot be registered and what to do.
pub async fn refusals(client: &impl GenericClient, rules: &RuleSet) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut refused = Vec::new();
    for migration in &rules.migrations {
        for separate in separate_sources(client, migration).await? {
            refused.push(format!("migration `{}` cannot be registered: {separate}", migration.name));
        }
    }
    Ok(refused)
}

/// The key columns of `migration` whose defaults can repeat each other's values (what the schema watch
/// reports while the proxy runs).
pub async fn separate_sources(
    client: &impl GenericClient,
    migration: &Migration,
) -> Result<Vec<SeparateSources>, tokio_postgres::Error> {
    let found = findings(client, migration).await?;
    Ok(found
        .into_iter()
        .filter_map(|finding| match finding {
            Finding::Separate(separate) => Some(separate),
            Finding::OneSource { .. } => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default(table: &str, source: Source, expression: &str) -> KeyDefault {
        KeyDefault { table: table.into(), source, expression: expression.into(), identity: false }
    }

    fn sequence(table: &str, sequence: &str) -> KeyDefault {
        default(table, Source::Sequences(vec![sequence.into()]), &format!("nextval('{sequence}'::regclass)"))
    }

    fn separate(finding: Option<Finding>) -> SeparateSources {
        match finding {
            Some(Finding::Separate(separate)) => separate,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn one_sequence_in_every_table_is_one_source() {
        let found = judge("id", vec![sequence("users", "public.s"), sequence("users_v2", "public.s")]);
        assert_eq!(
            found,
            Some(Finding::OneSource {
                column: "id".into(),
                described: "one sequence (public.s)".into(),
                sequences: vec!["public.s".into()],
            })
        );
    }

    #[test]
    fn a_function_beside_a_sequence_is_refused_and_the_remedy_copies_the_sequence() {
        let found = separate(judge(
            "id",
            vec![sequence("users", "public.s"), default("users_v2", Source::Function, "next_id()")],
        ));
        assert_eq!(found.remedy(), ["ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT nextval('public.s')"]);
        assert!(found.to_string().starts_with(
            "key column id takes its default from 2 separate sources (users from public.s; users_v2 from next_id())"
        ));
    }

    #[test]
    fn the_same_function_call_in_every_table_is_one_source_and_different_calls_are_not() {
        let same = judge(
            "id",
            vec![default("users", Source::Function, "next_id()"), default("users_v2", Source::Function, "next_id()")],
        );
        assert!(matches!(same, Some(Finding::OneSource { .. })), "{same:?}");
        let other = separate(judge(
            "id",
            vec![
                default("users", Source::Function, "next_id('users'::text)"),
                default("users_v2", Source::Function, "next_id('users_v2'::text)"),
            ],
        ));
        assert_eq!(other.remedy(), ["ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT next_id('users'::text)"]);
    }

    #[test]
    fn random_uuids_from_different_generators_are_one_source() {
        let found = judge(
            "id",
            vec![
                default("users", Source::RandomUuid, "gen_random_uuid()"),
                default("users_v2", Source::RandomUuid, "public.uuid_generate_v4()"),
            ],
        );
        assert!(matches!(found, Some(Finding::OneSource { .. })), "{found:?}");
    }

    #[test]
    fn the_same_expression_without_a_function_of_its_own_is_refused() {
        // Two `random()` draws are two sources even though they read alike.
        let expression = "((random() * (1000000)::double precision))::integer";
        separate(judge(
            "id",
            vec![default("users", Source::Expression, expression), default("users_v2", Source::Expression, expression)],
        ));
    }

    #[test]
    fn one_default_in_one_table_is_one_source_and_none_is_no_finding() {
        let found = judge("id", vec![default("users_v2", Source::Expression, "0")]);
        assert!(matches!(found, Some(Finding::OneSource { .. })), "{found:?}");
        assert_eq!(judge("id", Vec::new()), None);
    }

    #[test]
    fn an_identity_is_dropped_before_its_default_is_replaced() {
        let mut own = sequence("users_v2", "public.users_v2_id_seq");
        own.identity = true;
        let found = separate(judge("id", vec![sequence("users", "public.s"), own]));
        assert_eq!(
            found.remedy(),
            ["ALTER TABLE users_v2 ALTER COLUMN id DROP IDENTITY; \
              ALTER TABLE users_v2 ALTER COLUMN id SET DEFAULT nextval('public.s')"]
        );
    }

    #[test]
    fn sources_are_told_apart_by_what_the_catalog_records() {
        assert_eq!(
            source(vec!["public.s".into()], &[], "nextval('s'::regclass)"),
            Source::Sequences(vec!["public.s".into()])
        );
        assert_eq!(source(Vec::new(), &[], "gen_random_uuid()"), Source::RandomUuid);
        assert_eq!(source(Vec::new(), &[], "0"), Source::Expression);
        let ossp = |name: &str| vec![(name.to_owned(), Some("uuid-ossp".to_owned()))];
        assert_eq!(source(Vec::new(), &ossp("uuid_generate_v4"), "uuid_generate_v4()"), Source::RandomUuid);
        assert_eq!(source(Vec::new(), &ossp("uuid_generate_v4"), "ext.uuid_generate_v4()"), Source::RandomUuid);
        // v5 is derived from its arguments; a function of the same name outside the extension is the user's.
        assert_eq!(
            source(Vec::new(), &ossp("uuid_generate_v5"), "uuid_generate_v5(uuid_ns_url(), 'x'::text)"),
            Source::Function
        );
        assert_eq!(source(Vec::new(), &[("uuid_generate_v4".into(), None)], "uuid_generate_v4()"), Source::Function);
        // A sequence anywhere in the expression wins: its values are what may repeat.
        assert_eq!(
            source(vec!["public.s".into()], &[("f".into(), None)], "f(nextval('s'::regclass))"),
            Source::Sequences(vec!["public.s".into()])
        );
    }
}
