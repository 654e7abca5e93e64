//! The dual write of a COPY FROM STDIN's staged rows (see `copy`), run as one PL/pgSQL `DO` block:
//!
//! ```sql
//! DO $dualwrite$ #variable_conflict use_column
//! DECLARE __dw_rows bigint; __dw_schema text; __dw_table text;
//! BEGIN
//!   BEGIN
//!     <the dual-write INSERT, its syncs plain INSERTs> ... SELECT count(*) INTO __dw_rows FROM __dw_primary;
//!   EXCEPTION WHEN unique_violation THEN
//!     GET STACKED DIAGNOSTICS __dw_schema = SCHEMA_NAME, __dw_table = TABLE_NAME;
//!     IF (__dw_schema, __dw_table) NOT IN ((<a synced table>), ...) THEN RAISE; END IF;
//!     <the same dual write, its syncs the upserts every INSERT gets> ... INTO __dw_rows ...;
//!   END;
//!   PERFORM set_config('dualwrite.copy_rows', __dw_rows::text, true);
//! END $dualwrite$
//! ```
//!
//! Why: the sync of a dual write is an upsert (`ON CONFLICT (key) DO UPDATE`) so that a row the backfill
//! (or a repair) already put into the synced table is updated rather than refused. For a bulk COPY that
//! speculative insertion is the largest single cost (an index probe, a speculative lock and a confirming
//! WAL record per row: a plain INSERT of 100,000 rows into pgbench_accounts_v2 took about half the time of
//! the upsert, bench/REPORT.md: COPY). So the block first writes the synced table with plain INSERTs, in a
//! subtransaction; when that meets a row already there (a unique violation on a synced table), the
//! subtransaction's writes to both tables are undone and the very statement every client INSERT gets runs
//! instead, upsert and all. Either way the tables end as that statement leaves them, and the race with a
//! backfill batch is settled as it is for an INSERT: a batch's uncommitted row makes the plain INSERT wait
//! for it like the upsert does, and a committed one sends the block to the upsert. A unique violation on
//! any other table (the client's own duplicate key in the table it copies into) is raised again as it
//! came, without a second attempt. The rows written, as `SELECT count(*)` of the primary's RETURNING rows
//! counts them (less any a BEFORE trigger skipped, as COPY counts), are left in the transaction-local
//! setting `dualwrite.copy_rows`, which [`count_statement`] reads back for the client's `COPY n`.
//!
//! `#variable_conflict use_column` makes a column that shares a name with the block's variables (or
//! PL/pgSQL's own `found`) mean the column, as it would outside the block.
//!
//! A sync into the phase's source of truth (the old table for a v2 COPY in `dual_write`, the shadow for a
//! v1 COPY in `cutover`) is a plain INSERT in both statements (`dml::insert_sync`: a row already there
//! is a key the logical table holds, which must fail the COPY rather than be replaced). Such a block has
//! nothing to fall back to and runs the one statement without a subtransaction.

use std::fmt;

use sqlparser::ast::{Expr, Ident, OnInsert, SelectInto, SetExpr, Statement};

use crate::names::TableName;
use crate::template::{parse_statement, template_query};

/// The transaction-local setting the block leaves the row count in.
pub(crate) const ROWS_SETTING: &str = "dualwrite.copy_rows";

/// The block's variable holding the row count (`__dw_` names are the proxy's own, as its CTEs').
const ROWS_VARIABLE: &str = "__dw_rows";

/// A COPY's dual write as a `DO` block (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct CopyBlock {
    /// The dual write with its sync CTEs as plain INSERTs.
    plain: Statement,
    /// The dual write as any INSERT gets it.
    upsert: Statement,
    /// The tables the syncs write (a unique violation there means a row was already synced).
    synced: Vec<TableName>,
}

impl CopyBlock {
    /// `dual_write`: the `WITH __dw_primary AS (INSERT ...), <syncs> SELECT FROM __dw_primary` the rewriter
    /// made of the COPY's INSERT; `sync_ctes`: the names of its sync CTEs; `synced`: the tables they write.
    pub(crate) fn new(dual_write: Statement, sync_ctes: &[&str], synced: Vec<TableName>) -> Result<Self, String> {
        let Statement::Query(mut upsert) = dual_write else {
            return Err("the COPY's dual write is not a WITH query".into());
        };
        count_into_variable(&mut upsert)?;
        let mut plain = upsert.clone();
        let with = plain.with.as_mut().ok_or("the COPY's dual write has no WITH clause")?;
        let mut stripped = 0;
        for cte in with.cte_tables.iter_mut().filter(|c| sync_ctes.contains(&c.alias.name.value.as_str())) {
            if let SetExpr::Insert(Statement::Insert(insert)) = cte.query.body.as_mut() {
                if matches!(insert.on, Some(OnInsert::OnConflict(_))) {
                    insert.on = None;
                    stripped += 1;
                }
            }
        }
        if stripped != sync_ctes.len() {
            return Err("the COPY's dual write does not sync through upserts".into());
        }
        Ok(CopyBlock { plain: Statement::Query(plain), upsert: Statement::Query(upsert), synced })
    }
}

/// `SELECT <anything> FROM __dw_primary ...` -> `SELECT count(*) INTO __dw_rows FROM __dw_primary ...`.
fn count_into_variable(query: &mut sqlparser::ast::Query) -> Result<(), String> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err("the COPY's dual write does not end in a SELECT".into());
    };
    let counting = template_query("SELECT count(*) FROM __dw_primary");
    let SetExpr::Select(count) = *counting.body else { return Err("count query did not parse".into()) };
    select.projection = count.projection;
    select.into = Some(SelectInto {
        temporary: false,
        unlogged: false,
        table: false,
        targets: vec![Expr::Identifier(Ident::new(ROWS_VARIABLE))],
    });
    Ok(())
}

/// `SELECT current_setting('dualwrite.copy_rows')`: the block's row count, one row, one value.
pub(crate) fn count_statement() -> Result<Statement, String> {
    parse_statement(&format!("SELECT current_setting('{ROWS_SETTING}')"))
}

/// A string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl fmt::Display for CopyBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let synced = self
            .synced
            .iter()
            .map(|t| format!("({}, {})", literal(t.schema.as_deref().unwrap_or("public")), literal(&t.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let body = match synced.is_empty() {
            // Syncs into the source of truth only: no upsert to fall back to, no subtransaction.
            true => format!(
                "#variable_conflict use_column\nDECLARE {ROWS_VARIABLE} bigint;\n\
                 BEGIN\n{plain};\n\
                 PERFORM set_config({setting}, {ROWS_VARIABLE}::text, true);\nEND\n",
                plain = self.plain,
                setting = literal(ROWS_SETTING),
            ),
            false => format!(
                "#variable_conflict use_column\nDECLARE {ROWS_VARIABLE} bigint; __dw_schema text; __dw_table text;\n\
                 BEGIN\nBEGIN\n{plain};\n\
                 EXCEPTION WHEN unique_violation THEN\n\
                 GET STACKED DIAGNOSTICS __dw_schema = SCHEMA_NAME, __dw_table = TABLE_NAME;\n\
                 IF (__dw_schema, __dw_table) NOT IN ({synced}) THEN RAISE; END IF;\n\
                 {upsert};\nEND;\n\
                 PERFORM set_config({setting}, {ROWS_VARIABLE}::text, true);\nEND\n",
                plain = self.plain,
                upsert = self.upsert,
                setting = literal(ROWS_SETTING),
            ),
        };
        // A dollar-quote tag the body does not contain (its SQL could hold one in a string or a name).
        let mut tag = "dualwrite".to_string();
        while body.contains(&format!("${tag}$")) {
            tag.push('_');
        }
        write!(f, "DO ${tag}$\n{body}${tag}$")
    }
}

/// Parses SQL the rewriter wrote, for the checks of tests and fuzzers (sqlparser has no `DO` statement):
/// its statements split at the top-level semicolons, a `DO` block counted as one statement whose SQL
/// statements (the lines of its body that start with `WITH`, as the COPY block writes them) must parse too,
/// every other statement parsed as PostgreSQL. Returns how many statements the SQL holds.
pub fn parse_rewritten(sql: &str) -> Result<usize, String> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    use sqlparser::tokenizer::{Token, Tokenizer};

    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize().map_err(|e| e.to_string())?;
    let mut count = 0;
    for chunk in tokens.split(|t| *t == Token::SemiColon) {
        let words: Vec<&Token> = chunk.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
        match words.as_slice() {
            [] => continue,
            [Token::Word(w), Token::DollarQuotedString(body)] if w.value.eq_ignore_ascii_case("DO") => {
                for line in body.value.lines().filter(|l| l.starts_with("WITH ")) {
                    Parser::parse_sql(&dialect, line.trim_end_matches(';'))
                        .map_err(|e| format!("in the DO block, `{line}`: {e}"))?;
                }
                count += 1;
            }
            _ => {
                let text: String = chunk.iter().map(|t| t.to_string()).collect();
                count += Parser::parse_sql(&dialect, &text).map_err(|e| e.to_string())?.len();
            }
        }
    }
    Ok(count)
}
