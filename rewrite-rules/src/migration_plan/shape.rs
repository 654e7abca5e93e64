//! The shadow's shape as both target forms produce it: its columns (type, options, forward mapping), the
//! backward mapping of every old column carried back, its primary key, indexes and constraints (already in
//! the shadow's column names), and the AST helpers the forms share: parsing a type, an expression, a
//! default, renaming columns inside index and constraint definitions.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    ColumnOption, CreateIndex, DataType, Expr, Ident, IndexColumn, ObjectName, OrderByExpr, OrderByOptions,
    TableConstraint, VisitMut, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::PlanError;
use crate::model::parse_mapping_expr;
use crate::names::{ident, normalize_ident};

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub columns: Vec<ShadowColumn>,
    /// Old column -> expression over shadow columns, in the old table's column order.
    pub backward: Vec<(String, Expr)>,
    pub primary_key: Vec<String>,
    /// Indexes (the table they name is replaced by the shadow when the DDL is made).
    pub indexes: Vec<CreateIndex>,
    /// CHECK, FOREIGN KEY and UNIQUE constraints.
    pub constraints: Vec<TableConstraint>,
    pub notes: Vec<String>,
}

/// One column of the shadow.
#[derive(Debug, Clone)]
pub(crate) struct ShadowColumn {
    pub name: String,
    pub data_type: DataType,
    /// Column options kept in the CREATE TABLE (NOT NULL, DEFAULT, identity, ...), never constraints.
    pub options: Vec<ColumnOption>,
    /// Expression over old columns; `None`: dual writes leave the column to its default.
    pub forward: Option<Expr>,
}

impl ShadowColumn {
    /// NOT NULL without a default or identity: an insert must give it.
    pub fn required(&self) -> bool {
        let not_null = self.options.iter().any(|o| matches!(o, ColumnOption::NotNull));
        let defaulted =
            self.options.iter().any(|o| matches!(o, ColumnOption::Default(_) | ColumnOption::Generated { .. }));
        not_null && !defaulted
    }
}

impl Shape {
    /// Whether some unique index without predicate or expressions covers exactly `columns`.
    pub fn has_unique_index_on(&self, columns: &[String]) -> bool {
        let wanted: HashSet<&str> = columns.iter().map(String::as_str).collect();
        let from_index = self.indexes.iter().any(|index| {
            index.unique && index.predicate.is_none() && plain_columns(&index.columns).is_some_and(|c| c == wanted)
        });
        let from_constraint = self.constraints.iter().any(|c| match c {
            TableConstraint::Unique(u) => plain_columns(&u.columns).is_some_and(|c| c == wanted),
            _ => false,
        });
        from_index || from_constraint
    }

    /// Adds a plain unique index on `columns` (named when the DDL is made).
    pub fn add_unique_index(&mut self, columns: &[String]) {
        self.indexes.push(CreateIndex {
            name: None,
            table_name: ObjectName::from(vec![Ident::new("__dw_shadow")]),
            using: None,
            columns: columns.iter().map(|c| index_column(c)).collect(),
            unique: true,
            concurrently: true,
            r#async: false,
            if_not_exists: false,
            include: Vec::new(),
            nulls_distinct: None,
            with: Vec::new(),
            predicate: None,
            index_options: Vec::new(),
            alter_options: Vec::new(),
        });
    }
}

pub(crate) fn index_column(name: &str) -> IndexColumn {
    IndexColumn {
        column: OrderByExpr {
            expr: Expr::Identifier(ident(name)),
            options: OrderByOptions::default(),
            with_fill: None,
        },
        operator_class: None,
    }
}

/// The column names of an index made of plain columns only (`None` when an element is an expression).
fn plain_columns(columns: &[IndexColumn]) -> Option<HashSet<&str>> {
    columns
        .iter()
        .map(|c| match &c.column.expr {
            Expr::Identifier(id) => Some(id.value.as_str()),
            _ => None,
        })
        .collect()
}

/// Parses a column type (`numeric(12,2)`, `timestamp with time zone`, `text[]`), requiring nothing after it.
pub(crate) fn parse_type(text: &str, column: &str) -> Result<DataType, PlanError> {
    let dialect = PostgreSqlDialect {};
    let bad = |e: String| PlanError::column(column, format!("`{text}` is not a column type: {e}"));
    let mut parser = Parser::new(&dialect).try_with_sql(text).map_err(|e| bad(e.to_string()))?;
    let data_type = parser.parse_data_type().map_err(|e| bad(e.to_string()))?;
    if parser.peek_token().token != Token::EOF {
        return Err(bad(format!("unexpected text after `{data_type}`")));
    }
    Ok(data_type)
}

/// Parses a mapping or default expression given for `column`.
pub(crate) fn parse_expr(text: &str, column: &str) -> Result<Expr, PlanError> {
    parse_mapping_expr(text).map_err(|m| PlanError::column(column, m))
}

/// `CAST(<column> AS <type>)`.
pub(crate) fn cast(column: &str, data_type: &DataType) -> Expr {
    Expr::Cast {
        kind: sqlparser::ast::CastKind::Cast,
        expr: Box::new(super::column_expr(column)),
        data_type: data_type.clone(),
        format: None,
    }
}

/// The options of a column copied from the catalog: NOT NULL and the default.
pub(crate) fn catalog_options(
    not_null: bool,
    default: Option<&str>,
    column: &str,
) -> Result<Vec<ColumnOption>, PlanError> {
    let mut options = Vec::new();
    if not_null {
        options.push(ColumnOption::NotNull);
    }
    if let Some(default) = default {
        options.push(ColumnOption::Default(parse_expr(default, column)?));
    }
    Ok(options)
}

/// Whether two types are the same for the purpose of mapping (so no cast is needed): equal once the
/// common alias spellings are folded (`int` = `integer` = `int4`, `varchar` = `character varying`, ...).
pub(crate) fn same_type(a: &DataType, b: &DataType) -> bool {
    canonical_type(a) == canonical_type(b)
}

fn canonical_type(t: &DataType) -> String {
    let text = t.to_string().to_lowercase();
    let (base, rest) = match text.find(['(', '[']) {
        Some(i) => (text[..i].trim().to_string(), text[i..].replace(' ', "")),
        None => (text.trim().to_string(), String::new()),
    };
    let base = match base.as_str() {
        "int" | "int4" => "integer",
        "int8" => "bigint",
        "int2" => "smallint",
        "bool" => "boolean",
        "float8" | "double" => "double precision",
        "float4" => "real",
        "varchar" => "character varying",
        "char" | "bpchar" => "character",
        "timestamptz" => "timestamp with time zone",
        "timestamp" => "timestamp without time zone",
        "timetz" => "time with time zone",
        "time" => "time without time zone",
        "decimal" => "numeric",
        other => other,
    };
    format!("{base}{rest}")
}

/// Renames column references in index and constraint definitions (`renames`: old name -> shadow name).
/// Returns the first column a definition reads that is in `gone` (split or merged away), in which case
/// the definition cannot be carried over.
pub(crate) struct ColumnRenamer<'a> {
    pub renames: &'a HashMap<String, String>,
    pub gone: &'a HashSet<String>,
}

impl ColumnRenamer<'_> {
    fn rename_ident(&self, id: &mut Ident) -> Result<(), String> {
        let name = normalize_ident(id);
        if self.gone.contains(&name) {
            return Err(name);
        }
        if let Some(new) = self.renames.get(&name) {
            *id = ident(new);
        }
        Ok(())
    }

    fn rename_exprs<V: VisitMut>(&self, node: &mut V) -> Result<(), String> {
        struct Visitor<'r, 'a>(&'r ColumnRenamer<'a>, Option<String>);
        impl VisitorMut for Visitor<'_, '_> {
            type Break = ();
            fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
                let result = match expr {
                    Expr::Identifier(id) => self.0.rename_ident(id),
                    Expr::CompoundIdentifier(ids) => match ids.last_mut() {
                        Some(id) => self.0.rename_ident(id),
                        None => Ok(()),
                    },
                    _ => Ok(()),
                };
                match result {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(gone) => {
                        self.1 = Some(gone);
                        ControlFlow::Break(())
                    }
                }
            }
        }
        let mut visitor = Visitor(self, None);
        let _ = node.visit(&mut visitor);
        visitor.1.map_or(Ok(()), Err)
    }

    /// An index definition in the shadow's column names.
    pub fn index(&self, index: &mut CreateIndex) -> Result<(), String> {
        for column in &mut index.columns {
            self.rename_exprs(&mut column.column.expr)?;
        }
        for id in &mut index.include {
            self.rename_ident(id)?;
        }
        if let Some(predicate) = &mut index.predicate {
            self.rename_exprs(predicate)?;
        }
        Ok(())
    }

    /// A CHECK or FOREIGN KEY constraint in the shadow's column names (the referenced table's columns are
    /// left alone).
    pub fn constraint(&self, constraint: &mut TableConstraint) -> Result<(), String> {
        match constraint {
            TableConstraint::Check(check) => self.rename_exprs(check.expr.as_mut()),
            TableConstraint::ForeignKey(fk) => fk.columns.iter_mut().try_for_each(|id| self.rename_ident(id)),
            TableConstraint::Unique(unique) => {
                unique.columns.iter_mut().try_for_each(|c| self.rename_exprs(&mut c.column.expr))
            }
            _ => Ok(()),
        }
    }
}
