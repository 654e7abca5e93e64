//! Postgres identifier handling: normalizing table names the way Postgres folds them (unquoted words are
//! lowercased, quoted ones kept verbatim), matching a reference in client SQL against a migrated table, and
//! quoting a name only when Postgres would otherwise read it differently.

use std::fmt;

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

/// A table name, normalized as Postgres stores it in the catalog.
///
/// `schema` is `None` when the name was written unqualified. In a rules file that means the `public` schema;
/// in client SQL the session's `search_path` decides, which the proxy asks the session's own server
/// connection (see `Route::unqualified_elsewhere`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// Parses `name`, `schema.name`, `"Quoted"."Name"` as Postgres would.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let dialect = sqlparser::dialect::PostgreSqlDialect {};
        let mut parser = sqlparser::parser::Parser::new(&dialect)
            .try_with_sql(text)
            .map_err(|e| format!("`{text}` is not a table name: {e}"))?;
        let object = parser.parse_object_name(false).map_err(|e| format!("`{text}` is not a table name: {e}"))?;
        if parser.peek_token().token != sqlparser::tokenizer::Token::EOF {
            return Err(format!("`{text}` is not a table name: unexpected text after the name"));
        }
        Self::from_object_name(&object)
            .ok_or_else(|| format!("`{text}` is not a table name: expected `table` or `schema.table`"))
    }

    /// The normalized name of a reference in parsed SQL, if it is a plain one- or two-part name.
    pub fn from_object_name(object: &ObjectName) -> Option<TableName> {
        let mut parts = Vec::with_capacity(2);
        for part in &object.0 {
            match part {
                ObjectNamePart::Identifier(ident) => parts.push(normalize_ident(ident)),
                ObjectNamePart::Function(_) => return None,
            }
        }
        match parts.len() {
            1 => Some(TableName { schema: None, name: parts.pop()? }),
            2 => {
                let name = parts.pop()?;
                Some(TableName { schema: parts.pop(), name })
            }
            _ => None,
        }
    }

    /// True if a reference written as `self` in client SQL denotes the table `rule` of the rules file.
    /// `unqualified_reaches_rule`: whether, in the session, an unqualified reference to the rule's name
    /// resolves to the rule's table (it is first of that name on the `search_path`, no temporary table of
    /// that name hides it).
    pub fn denotes(&self, rule: &TableName, unqualified_reaches_rule: bool) -> bool {
        if self.name != rule.name {
            return false;
        }
        match &self.schema {
            Some(schema) => schema == rule.schema_or_public(),
            None => unqualified_reaches_rule,
        }
    }

    /// The schema of a rules-file name: an unqualified one is in `public`.
    pub fn schema_or_public(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }

    /// The name with its schema spelled out (`public` for an unqualified rules-file name), as a
    /// `to_regclass` argument or in SQL the proxy writes itself, so that it never depends on a session's
    /// `search_path`.
    pub fn qualified(&self) -> TableName {
        TableName { schema: Some(self.schema_or_public().to_owned()), name: self.name.clone() }
    }

    /// The name as an AST node, quoted where needed.
    pub fn to_object_name(&self) -> ObjectName {
        let mut parts = Vec::with_capacity(2);
        if let Some(schema) = &self.schema {
            parts.push(ident(schema));
        }
        parts.push(ident(&self.name));
        ObjectName::from(parts)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_object_name())
    }
}

/// The catalog spelling of an identifier written in SQL.
pub fn normalize_ident(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// An identifier node for a catalog name, quoted only if Postgres would fold or misread it unquoted.
pub fn ident(name: &str) -> Ident {
    if needs_quotes(name) {
        Ident::with_quote('"', name)
    } else {
        Ident::new(name)
    }
}

/// The SQL spelling of a catalog name (`email`, `"Email"`, `"order"`), for code that builds SQL text from
/// rules (the backfill job, `dualwrite check`).
pub fn quote_ident(name: &str) -> String {
    ident(name).to_string()
}

/// A string literal of `text` for SQL the crate writes itself (a migration's or table's name in a message):
/// quotes doubled, and written as `E'...'` with backslashes doubled when it holds one, so that it reads the
/// same whatever the session's `standard_conforming_strings`.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

fn needs_quotes(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    !(first_ok && rest_ok) || is_reserved(name)
}

/// Postgres reserved key words (appendix C, "reserved" and "reserved (can be function or type)"): these
/// cannot be used as bare column or table names.
fn is_reserved(word: &str) -> bool {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "authorization",
        "between",
        "bigint",
        "binary",
        "bit",
        "boolean",
        "both",
        "case",
        "cast",
        "char",
        "character",
        "check",
        "coalesce",
        "collate",
        "collation",
        "column",
        "concurrently",
        "constraint",
        "create",
        "cross",
        "current_catalog",
        "current_date",
        "current_role",
        "current_schema",
        "current_time",
        "current_timestamp",
        "current_user",
        "dec",
        "decimal",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "exists",
        "extract",
        "false",
        "fetch",
        "float",
        "for",
        "foreign",
        "freeze",
        "from",
        "full",
        "grant",
        "greatest",
        "group",
        "grouping",
        "having",
        "ilike",
        "in",
        "initially",
        "inner",
        "inout",
        "int",
        "integer",
        "intersect",
        "interval",
        "into",
        "is",
        "isnull",
        "join",
        "lateral",
        "leading",
        "least",
        "left",
        "like",
        "limit",
        "localtime",
        "localtimestamp",
        "national",
        "natural",
        "nchar",
        "none",
        "normalize",
        "not",
        "notnull",
        "null",
        "nullif",
        "numeric",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "out",
        "outer",
        "overlaps",
        "overlay",
        "placing",
        "position",
        "precision",
        "primary",
        "real",
        "references",
        "returning",
        "right",
        "row",
        "select",
        "session_user",
        "setof",
        "similar",
        "smallint",
        "some",
        "substring",
        "symmetric",
        "system_user",
        "table",
        "tablesample",
        "then",
        "time",
        "timestamp",
        "to",
        "trailing",
        "treat",
        "trim",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "values",
        "varchar",
        "variadic",
        "verbose",
        "when",
        "where",
        "window",
        "with",
        "xmlattributes",
        "xmlconcat",
        "xmlelement",
        "xmlexists",
        "xmlforest",
        "xmlnamespaces",
        "xmlparse",
        "xmlpi",
        "xmlroot",
        "xmlserialize",
        "xmltable",
    ];
    RESERVED.binary_search(&word).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_list_is_sorted_for_binary_search() {
        let words = ["all", "order", "user", "xmltable", "analyse", "window", "with"];
        for w in words {
            assert!(is_reserved(w), "{w}");
        }
        assert!(!is_reserved("users"));
        assert!(!is_reserved("name"));
    }

    #[test]
    fn parses_and_normalizes_table_names() {
        assert_eq!(
            TableName::parse("public.Users").unwrap(),
            TableName { schema: Some("public".into()), name: "users".into() }
        );
        assert_eq!(
            TableName::parse("\"Sales\".\"Order Items\"").unwrap(),
            TableName { schema: Some("Sales".into()), name: "Order Items".into() }
        );
        assert_eq!(TableName::parse("users").unwrap(), TableName { schema: None, name: "users".into() });
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("users x").is_err());
        assert!(TableName::parse("").is_err());
    }

    #[test]
    fn qualified_references_match_by_schema_and_unqualified_ones_by_the_session_resolution() {
        let rule = TableName::parse("public.users").unwrap();
        assert!(TableName::parse("users").unwrap().denotes(&rule, true));
        assert!(!TableName::parse("users").unwrap().denotes(&rule, false));
        assert!(TableName::parse("PUBLIC.USERS").unwrap().denotes(&rule, false));
        assert!(!TableName::parse("other.users").unwrap().denotes(&rule, true));
        assert!(!TableName::parse("pg_temp.users").unwrap().denotes(&rule, true));
        assert!(!TableName::parse("\"Users\"").unwrap().denotes(&rule, true));
        let unqualified_rule = TableName::parse("users").unwrap();
        assert!(TableName::parse("public.users").unwrap().denotes(&unqualified_rule, false));
        assert!(!TableName::parse("tenant.users").unwrap().denotes(&unqualified_rule, true));
        assert_eq!(unqualified_rule.qualified().to_string(), "public.users");
    }

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(quote_ident("users_v2"), "users_v2");
        assert_eq!(quote_ident("Users"), "\"Users\"");
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(quote_ident("two words"), "\"two words\"");
        assert_eq!(TableName::parse("\"Sales\".orders").unwrap().to_string(), "\"Sales\".orders");
    }
}
