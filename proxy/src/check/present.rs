//! A merge source's `present` column, judged from the forward expression that computes it: a DELETE of
//! another source keeps the shadow row only while this column is not NULL, so it must never be NULL while
//! the source's row exists. The expression is read with sqlparser into the old columns it is computed from
//! when it is NULL exactly when one of them is: a plain column, or casts, operators and built-in functions
//! that are strict (NULL in, NULL out; `lower(email)`, `first || ' ' || last`, `id::text`). Then the
//! catalog's NOT NULL on those columns decides. Anything else (COALESCE, CASE, NULLIF, AND/OR, a function of
//! the database's own) can be NULL or not whatever its inputs, and is left to the operator.

use sqlparser::ast::{BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, UnaryOperator, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

/// What the `present` column's NULLs follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PresentInputs {
    /// NULL exactly when one of these old columns is (names as the catalog spells them, in order, once each).
    Strict(Vec<String>),
    /// The proxy cannot tell when it is NULL.
    Unknown,
}

/// Built-in functions that return NULL exactly when an argument is NULL (pg_proc.proisstrict, and no NULL
/// from non-NULL arguments), as a `present` expression may use them.
const STRICT_FUNCTIONS: &[&str] = &[
    "lower",
    "upper",
    "initcap",
    "btrim",
    "ltrim",
    "rtrim",
    "md5",
    "length",
    "char_length",
    "octet_length",
    "substr",
    "replace",
    "left",
    "right",
    "lpad",
    "rpad",
    "repeat",
    "reverse",
    "translate",
    "split_part",
    "abs",
    "round",
    "trunc",
    "floor",
    "ceil",
    "ceiling",
    "sign",
    "date_trunc",
    "text",
    "int4",
    "int8",
    "numeric",
];

/// The old columns `expression` (a forward mapping's) is NULL exactly when one of is, or `Unknown`.
pub(crate) fn present_inputs(expression: &str) -> PresentInputs {
    let parsed = Parser::new(&PostgreSqlDialect {}).try_with_sql(expression).and_then(|mut parser| {
        let expr = parser.parse_expr()?;
        parser.expect_token(&Token::EOF)?;
        Ok(expr)
    });
    let mut columns = Vec::new();
    match parsed {
        Ok(expr) if strict_inputs(&expr, &mut columns) && !columns.is_empty() => PresentInputs::Strict(columns),
        _ => PresentInputs::Unknown,
    }
}

/// Adds the columns `expr` reads to `columns`; false when `expr` is not strict in them.
fn strict_inputs(expr: &Expr, columns: &mut Vec<String>) -> bool {
    match expr {
        Expr::Identifier(ident) => {
            push_column(ident, columns);
            true
        }
        // `source.column`: the source table's column.
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(ident) => {
                push_column(ident, columns);
                true
            }
            None => false,
        },
        Expr::Value(v) => v.value != Value::Null,
        Expr::Nested(inner) => strict_inputs(inner, columns),
        Expr::Cast { expr, .. } => strict_inputs(expr, columns),
        Expr::UnaryOp { op: UnaryOperator::Minus | UnaryOperator::Plus | UnaryOperator::Not, expr } => {
            strict_inputs(expr, columns)
        }
        Expr::BinaryOp { left, op, right } => {
            strict_operator(op) && strict_inputs(left, columns) && strict_inputs(right, columns)
        }
        Expr::Trim { expr, trim_what, trim_characters, .. } => {
            strict_inputs(expr, columns)
                && trim_what.as_deref().is_none_or(|w| strict_inputs(w, columns))
                && trim_characters.iter().flatten().all(|c| strict_inputs(c, columns))
        }
        Expr::Substring { expr, substring_from, substring_for, .. } => {
            strict_inputs(expr, columns)
                && substring_from.as_deref().is_none_or(|e| strict_inputs(e, columns))
                && substring_for.as_deref().is_none_or(|e| strict_inputs(e, columns))
        }
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
            let plain = f.filter.is_none() && f.over.is_none() && f.within_group.is_empty();
            let FunctionArguments::List(list) = &f.args else { return false };
            plain
                && STRICT_FUNCTIONS.contains(&name)
                && list.duplicate_treatment.is_none()
                && list.clauses.is_empty()
                && list.args.iter().all(|arg| match arg {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => strict_inputs(e, columns),
                    _ => false,
                })
        }
        _ => false,
    }
}

/// Operators that are NULL exactly when an operand is (AND, OR and the IS forms are not).
fn strict_operator(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Plus
            | BinaryOperator::Minus
            | BinaryOperator::Multiply
            | BinaryOperator::Divide
            | BinaryOperator::Modulo
            | BinaryOperator::StringConcat
            | BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

/// A column name as the catalog spells it: unquoted names fold to lower case, as Postgres folds them.
fn push_column(ident: &sqlparser::ast::Ident, columns: &mut Vec<String>) {
    let name = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
    if !columns.contains(&name) {
        columns.push(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(columns: &[&str]) -> PresentInputs {
        PresentInputs::Strict(columns.iter().map(|c| c.to_string()).collect())
    }

    #[test]
    fn plain_columns_casts_operators_and_strict_builtins_follow_their_columns() {
        let cases = [
            ("email", strict(&["email"])),
            ("\"Email\"", strict(&["Email"])),
            ("EMAIL", strict(&["email"])),
            ("accounts.email", strict(&["email"])),
            ("lower(email)", strict(&["email"])),
            ("pg_catalog.lower(email)", strict(&["email"])),
            ("lower(trim(email))", strict(&["email"])),
            ("trim(both ' ' from email)", strict(&["email"])),
            ("substring(name from 1 for 3)", strict(&["name"])),
            ("first_name || ' ' || last_name", strict(&["first_name", "last_name"])),
            ("id::text", strict(&["id"])),
            ("CAST(amount AS numeric) / 100", strict(&["amount"])),
            ("(price * qty)", strict(&["price", "qty"])),
            ("-balance", strict(&["balance"])),
        ];
        for (expression, expected) in cases {
            assert_eq!(present_inputs(expression), expected, "{expression}");
        }
    }

    #[test]
    fn what_can_be_null_or_not_whatever_its_inputs_is_unknown() {
        for expression in [
            "coalesce(email, '')",
            "nullif(email, '')",
            "CASE WHEN email IS NULL THEN 'x' ELSE email END",
            "email IS NOT NULL",
            "a AND b",
            "concat(first_name, last_name)",
            "my_schema.normalize(email)",
            "NULL",
            "'constant'",
            "now()",
            "(SELECT 1)",
            "not sql at all (",
        ] {
            assert_eq!(present_inputs(expression), PresentInputs::Unknown, "{expression}");
        }
    }
}
