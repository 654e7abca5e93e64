//! How the rewriter's answers become what the relay does: a plan's transforms in the relay's terms, a
//! refusal raised by the server (counted, with its hint), and the parameter types that let a refusal be
//! prepared in a statement's place, and the 57P03 refusal while the shared state is unknown.

use std::sync::Arc;

use dualwrite_rules::{CopyTee, Plan, Rejection, RowsDisposition, RuleSet, TagRewrite};

use crate::control::SqlError as ControlError;
use crate::interceptor::{CommandTag, Raise, ResponseTransform, TeeRewrite, Verdict};
use crate::protocol::responses::LatencySink;
use crate::state::StateHandle;

/// Neither a write nor refused: a candidate for shadow reads.
pub(super) fn is_read(plan: &Plan) -> bool {
    !plan.is_write() && !matches!(plan, Plan::Rejected(_))
}

/// Parameter types for a refusal prepared in place of `sql`, so that the client's Bind (which supplies
/// `sql`'s parameters) succeeds and the Execute raises the refusal: as many as `sql` uses, undeclared ones
/// as bytea, whose binary input accepts any bytes.
pub(super) fn refusal_param_types(sql: &str, declared: &[u32]) -> Vec<u32> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};
    const BYTEA: u32 = 17;
    let used = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map(|tokens| {
            tokens
                .iter()
                .filter_map(|t| match t {
                    Token::Placeholder(p) => p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()),
                    _ => None,
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    (0..used.max(declared.len())).map(|i| declared.get(i).copied().filter(|&t| t != 0).unwrap_or(BYTEA)).collect()
}

/// The relay's transform for the rewriter's; `dual_write`: where the latency of a dual-writing request goes.
pub(super) fn relay_transform(
    t: &dualwrite_rules::StatementTransform,
    dual_write: Option<&LatencySink>,
) -> ResponseTransform {
    let hidden = t.rows == RowsDisposition::Hidden;
    let count_from_row = t.rows == RowsDisposition::CountRow;
    let suppress = t.rows == RowsDisposition::Suppress || hidden || count_from_row;
    ResponseTransform {
        command_tag: t.command_tag.map(|tag| match tag {
            TagRewrite::Insert => CommandTag::Insert,
            TagRewrite::Update => CommandTag::Update,
            TagRewrite::Delete => CommandTag::Delete,
            TagRewrite::Copy => CommandTag::Copy,
        }),
        suppress_rows: suppress,
        describe_no_data: suppress,
        hidden,
        count_from_row,
        dual_write: dual_write.cloned(),
        ..ResponseTransform::default()
    }
}

/// The relay's statements for a COPY the rewriter can dual-write with COPYs alone (see
/// `protocol::requests::tee`): the check and the client's COPY hidden, the client COPY's row count kept
/// for the second COPY's tag; an error of the check or of the second COPY falls back to staging.
pub(super) fn tee_rewrite(tee: CopyTee, dual_write: Option<&LatencySink>) -> TeeRewrite {
    let hidden = ResponseTransform { hidden: true, suppress_rows: true, describe_no_data: true, ..Default::default() };
    let mut statements = vec![ResponseTransform::default(); 3];
    statements[CopyTee::CHECK] = ResponseTransform { falls_back: true, ..hidden.clone() };
    statements[CopyTee::CLIENT_COPY] =
        ResponseTransform { keeps_count: true, copy_response_hidden: true, dual_write: dual_write.cloned(), ..hidden };
    statements[CopyTee::OTHER_COPY] = ResponseTransform {
        command_tag: Some(CommandTag::Copy),
        count_from_row: true,
        copy_response_hidden: true,
        falls_back: true,
        dual_write: dual_write.cloned(),
        ..Default::default()
    };
    TeeRewrite { sql: tee.sql, statements, columns: tee.columns }
}

/// Per migration (by index), where the latency of requests that dual-write it is recorded
/// (`dualwrite_dual_write_duration_seconds{migration}`).
pub(super) fn dual_write_sinks(rules: &RuleSet) -> Arc<[LatencySink]> {
    rules
        .migrations
        .iter()
        .map(|m| {
            let histogram =
                metrics::histogram!(crate::metrics::DUAL_WRITE_DURATION_SECONDS, "migration" => m.name.clone());
            LatencySink::new(move |latency| histogram.record(latency.as_secs_f64()))
        })
        .collect()
}

/// The sink of a plan that dual-writes `migrations` (one sink, or one that records into each).
pub(super) fn plan_sink(sinks: &Arc<[LatencySink]>, writes: bool, migrations: &[usize]) -> Option<LatencySink> {
    match migrations {
        _ if !writes => None,
        [one] => sinks.get(*one).cloned(),
        several => {
            let all: Vec<LatencySink> = several.iter().filter_map(|i| sinks.get(*i).cloned()).collect();
            Some(LatencySink::new(move |latency| all.iter().for_each(|sink| sink.record(latency))))
        }
    }
}

pub(super) fn rejection_error(rejection: &Rejection) -> ControlError {
    ControlError::new(rejection.sqlstate, rejection.message.clone()).with_hint(
        "dualwrite refuses statements on a table under migration that it cannot apply to both tables; \
         see the migration's rules and DUALWRITE STATUS.",
    )
}

pub(super) fn count_rejection(rejection: &Rejection) {
    metrics::counter!(
        "dualwrite_rejected_statements_total",
        "migration" => rejection.migration.clone(),
        "reason" => rejection.reason.as_str(),
    )
    .increment(1);
}

pub(super) fn raise(error: &ControlError, control: bool) -> Verdict {
    Verdict::Raise(Raise { sql: error.raise_statement(), control })
}

/// The 57P03 refusal, while the shared state is unknown, of SQL that names a migrated table (the
/// rewriter's cheap check: a false positive only refuses during the outage, never single-writes).
pub(super) fn unknown_state_refusal(state: &StateHandle, rules: &RuleSet, sql: &str) -> Option<ControlError> {
    let age = state.unknown_for()?;
    let lower = sql.to_ascii_lowercase();
    let mut names: Vec<&str> = rules
        .migrations
        .iter()
        .filter(|m| m.old_tables().iter().any(|t| lower.contains(&t.name.to_ascii_lowercase())))
        .map(|m| m.name.as_str())
        .collect();
    if names.is_empty() {
        names = rules.migrations.iter().map(|m| m.name.as_str()).collect();
    }
    metrics::counter!("dualwrite_state_unknown_refusals_total").increment(1);
    Some(
        ControlError::new(
            crate::sql_error::codes::CANNOT_CONNECT_NOW,
            format!(
                "dualwrite: state unknown for migration {}: the state database has not answered for {}s \
                 (limit {}s), so statements on its tables are refused rather than routed by stale state",
                names.join(", "),
                age.as_secs(),
                state.max_age().as_secs()
            ),
        )
        .with_hint("Retry when the state database is reachable again; other tables are unaffected."),
    )
}
