//! The mappings of one migration as the jobs need them: old and shadow table names, the shared key,
//! `shadow column = expression over old columns` (forward) and `old column = expression over shadow
//! columns` (backward, with which a repair rewrites the old table once the shadow is the source of truth).
//! Expressions are parsed with sqlparser and identifiers are kept as quoted AST idents, so the SQL built
//! from them (see `sql`) never splices raw rule text. A split (several shadow tables) keeps its whole new
//! shape in `forward` and lists which columns each target holds (`targets`); a merge (several old tables)
//! keeps every old column in `backward` and lists which columns each source holds (`sources`).

use dualwrite_rules::{Migration, RuleSet, TableName};
use sqlparser::ast::{DataType, Expr, Ident, ObjectName, ObjectNamePart};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;
use tokio_postgres::Client;

use super::{JobError, JobResult};

/// `[schema.]name` of a table, as Postgres stores them (already case-folded, unquoted). Without a schema
/// the name resolves through the job connection's `search_path`, as the application's does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName { schema: Some(schema.into()), name: name.into() }
    }

    /// The name as a quoted AST object name, e.g. `"public"."users"`.
    pub fn object_name(&self) -> ObjectName {
        let parts = self.schema.iter().chain(std::iter::once(&self.name));
        ObjectName(parts.map(|part| ObjectNamePart::Identifier(quoted(part))).collect())
    }
}

impl From<&TableName> for QualifiedName {
    /// A rules-file name: unqualified means `public`, never whatever the job connection's search_path finds.
    fn from(table: &TableName) -> Self {
        let qualified = table.qualified();
        QualifiedName { schema: qualified.schema, name: qualified.name }
    }
}

/// One migration's forward mapping, independent of how the rules file spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMapping {
    pub migration: String,
    pub old: QualifiedName,
    /// The shadow (a split's first target).
    pub shadow: QualifiedName,
    pub key: Vec<String>,
    /// `(shadow column, SQL expression over the old table's columns)`, in rules order: the whole new shape.
    pub forward: Vec<(String, String)>,
    /// Every shadow table and the columns of `forward` it holds (key included): one unless split.
    pub targets: Vec<(QualifiedName, Vec<String>)>,
    /// `(old column, SQL expression over the shadow's columns)`, in rules order.
    pub backward: Vec<(String, String)>,
    /// A merge's old tables (`old` is the first), the old columns each holds and the shadow columns it
    /// writes (key included in both); empty unless merged. Their rows are read FULL JOINed on the key,
    /// presenting every column of `backward`.
    pub sources: Vec<(QualifiedName, Vec<String>, Vec<String>)>,
}

impl From<&Migration> for TableMapping {
    fn from(migration: &Migration) -> Self {
        TableMapping {
            migration: migration.name.clone(),
            old: (&migration.table).into(),
            shadow: (&migration.shadow).into(),
            key: migration.key.clone(),
            forward: migration.forward.clone(),
            targets: migration
                .targets()
                .into_iter()
                .map(|t| (t.table.into(), t.forward.iter().map(|(c, _)| c.clone()).collect()))
                .collect(),
            backward: migration.backward.clone(),
            sources: migration
                .merge
                .iter()
                .map(|s| {
                    let old = s.old_columns().map(str::to_string).collect();
                    (QualifiedName::from(&s.table), old, s.shadow_columns().map(str::to_string).collect())
                })
                .collect(),
        }
    }
}

impl TableMapping {
    /// The mapping of migration `name` in `rules`.
    pub fn from_rules(rules: &RuleSet, name: &str) -> JobResult<Self> {
        let (_, migration) = rules.find(name).ok_or_else(|| JobError::UnknownMigration(name.to_string()))?;
        Ok(migration.into())
    }
}

/// A quoted identifier: always quoting keeps names exactly as stored in the catalog.
pub fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// Parses one mapping expression; the whole text must be a single expression.
pub fn parse_expr(migration: &str, text: &str) -> JobResult<Expr> {
    let bad = |reason: String| JobError::Mapping { migration: migration.to_string(), reason };
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(text).map_err(|e| bad(format!("expression {text:?}: {e}")))?;
    let expr = parser.parse_expr().map_err(|e| bad(format!("expression {text:?}: {e}")))?;
    if parser.peek_token().token != Token::EOF {
        return Err(bad(format!("expression {text:?} has trailing text")));
    }
    Ok(expr)
}

/// Parses a type name as `format_type()` prints it.
fn parse_type(migration: &str, text: &str) -> JobResult<DataType> {
    let bad = |e: String| JobError::Mapping {
        migration: migration.to_string(),
        reason: format!("shadow column type {text:?}: {e}"),
    };
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(text).map_err(|e| bad(e.to_string()))?;
    let data_type = parser.parse_data_type().map_err(|e| bad(e.to_string()))?;
    if parser.peek_token().token != Token::EOF {
        return Err(bad("trailing text".into()));
    }
    Ok(data_type)
}

/// A mapping checked against the catalog, holding the AST pieces the statement builders use.
#[derive(Debug, Clone)]
pub struct CompiledMapping {
    pub migration: String,
    pub old: ObjectName,
    pub shadow: ObjectName,
    /// Alias of the old table's rows, its bare name, so expressions qualified as `users.name` resolve.
    pub old_alias: Ident,
    pub key: Vec<Ident>,
    /// Every shadow table (more than one for a split) and the indexes of `shadow_columns` it holds.
    pub targets: Vec<(ObjectName, Vec<usize>)>,
    pub shadow_columns: Vec<Ident>,
    pub forward: Vec<Expr>,
    /// The shadow column types, to compare mapped values exactly as the shadow would store them.
    pub shadow_types: Vec<DataType>,
    /// Alias of the shadow's rows, its bare name, so backward expressions qualified as `users_v2.x` resolve.
    pub shadow_alias: Ident,
    /// Old columns written by a repair of the old table, and their expressions over the shadow's columns.
    pub old_columns: Vec<Ident>,
    pub backward: Vec<Expr>,
    /// A merge's old tables (`old` first), their columns and the indexes of `shadow_columns` each writes;
    /// empty unless merged (see `sql::old_from`).
    pub sources: Vec<(ObjectName, Vec<Ident>, Vec<usize>)>,
}

impl CompiledMapping {
    /// Parses the expressions and checks the key: each key column must map to itself in both mappings,
    /// because batches and chunks are key ranges shared by both tables.
    pub fn compile(mapping: &TableMapping, shadow_types: Vec<DataType>) -> JobResult<Self> {
        let migration = mapping.migration.as_str();
        let bad = |reason: String| JobError::Mapping { migration: migration.to_string(), reason };
        if mapping.key.is_empty() {
            return Err(bad("no key columns".into()));
        }
        for (direction, pairs) in [("forward", &mapping.forward), ("backward", &mapping.backward)] {
            for key in &mapping.key {
                let expr = pairs
                    .iter()
                    .find(|(column, _)| column == key)
                    .map(|(_, expr)| parse_expr(migration, expr))
                    .transpose()?;
                let identity = matches!(&expr, Some(Expr::Identifier(ident)) if ident.value.eq_ignore_ascii_case(key));
                if !identity {
                    return Err(bad(format!("key column {key:?} must map to itself in the {direction} mapping")));
                }
            }
        }
        let exprs = |pairs: &[(String, String)]| {
            pairs.iter().map(|(_, expr)| parse_expr(migration, expr)).collect::<JobResult<Vec<_>>>()
        };
        let forward = exprs(&mapping.forward)?;
        let backward = exprs(&mapping.backward)?;
        if shadow_types.len() != forward.len() {
            return Err(bad("shadow column types do not match the forward mapping".into()));
        }
        let mut targets = Vec::with_capacity(mapping.targets.len());
        for (table, columns) in &mapping.targets {
            let mut indexes = Vec::with_capacity(columns.len());
            for column in columns {
                let index = mapping.forward.iter().position(|(c, _)| c == column);
                indexes.push(index.ok_or_else(|| bad(format!("target column {column:?} is not mapped")))?);
            }
            if mapping.key.iter().any(|k| !columns.contains(k)) {
                return Err(bad(format!("shadow table {} does not hold every key column", table.object_name())));
            }
            targets.push((table.object_name(), indexes));
        }
        if targets.is_empty() {
            return Err(bad("no shadow table".into()));
        }
        Ok(CompiledMapping {
            migration: migration.to_string(),
            old: mapping.old.object_name(),
            shadow: mapping.shadow.object_name(),
            old_alias: quoted(&mapping.old.name),
            key: mapping.key.iter().map(|k| quoted(k)).collect(),
            targets,
            shadow_columns: mapping.forward.iter().map(|(column, _)| quoted(column)).collect(),
            forward,
            shadow_types,
            shadow_alias: quoted(&mapping.shadow.name),
            old_columns: mapping.backward.iter().map(|(column, _)| quoted(column)).collect(),
            backward,
            sources: mapping
                .sources
                .iter()
                .map(|(table, columns, writes)| {
                    let indexes = writes.iter().filter_map(|c| mapping.forward.iter().position(|(f, _)| f == c));
                    (table.object_name(), columns.iter().map(|c| quoted(c)).collect(), indexes.collect())
                })
                .collect(),
        })
    }

    /// True if the new shape is spread over several shadow tables.
    pub fn is_split(&self) -> bool {
        self.targets.len() > 1
    }

    /// True if several old tables are merged into the shadow.
    pub fn is_merge(&self) -> bool {
        !self.sources.is_empty()
    }

    /// Reads the shadow column types from the catalog (each column from the target holding it) and
    /// compiles the mapping.
    pub async fn load(client: &Client, mapping: &TableMapping) -> JobResult<Self> {
        let mut types: Vec<Option<DataType>> = vec![None; mapping.forward.len()];
        for (table, columns) in &mapping.targets {
            let shadow = table.object_name().to_string();
            let rows = client
                .query(
                    "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
                    &[&shadow],
                )
                .await?;
            for column in columns {
                let found =
                    rows.iter().find(|row| row.get::<_, String>(0) == *column).ok_or_else(|| JobError::Mapping {
                        migration: mapping.migration.clone(),
                        reason: format!("shadow table {shadow} has no column {column:?}"),
                    })?;
                if let Some(i) = mapping.forward.iter().position(|(c, _)| c == column) {
                    types[i] = Some(parse_type(&mapping.migration, &found.get::<_, String>(1))?);
                }
            }
        }
        let types = types.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| JobError::Mapping {
            migration: mapping.migration.clone(),
            reason: "a forward column is held by no shadow table".into(),
        })?;
        Self::compile(mapping, types)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> TableMapping {
        TableMapping {
            migration: "m".into(),
            old: QualifiedName::new("public", "users"),
            shadow: QualifiedName::new("public", "users_v2"),
            key: vec!["id".into()],
            forward: vec![("id".into(), "id".into()), ("first".into(), "split_part(name, ' ', 1)".into())],
            targets: vec![(QualifiedName::new("public", "users_v2"), vec!["id".into(), "first".into()])],
            backward: vec![("id".into(), "id".into()), ("name".into(), "first".into())],
            sources: vec![],
        }
    }

    #[test]
    fn quoting_escapes_embedded_quotes() {
        assert_eq!(QualifiedName::new("s", "we\"ird").object_name().to_string(), "\"s\".\"we\"\"ird\"");
    }

    #[test]
    fn rejects_trailing_text_and_non_identity_keys() {
        assert!(parse_expr("m", "a + 1; DROP TABLE x").is_err());
        let mut mapping = users();
        mapping.forward[0].1 = "id + 1".into();
        let types = vec![DataType::BigInt(None), DataType::Text];
        assert!(CompiledMapping::compile(&mapping, types.clone()).is_err());
        let mut backward = users();
        backward.backward[0].1 = "-id".into();
        assert!(CompiledMapping::compile(&backward, types.clone()).is_err());
        assert!(CompiledMapping::compile(&users(), types).is_ok());
    }
}
