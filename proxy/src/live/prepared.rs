//! A session's prepared statements as the client sent them: the route and rules generation each was last
//! judged under, so that the session can tell when one must be prepared again (`session`).

use dualwrite_rules::Route;

use super::LiveRules;

/// `PreparedSql::generation` of a statement prepared upstream as the unknown-state refusal: no rules
/// generation has it, so the statement is judged again once the state is confirmed.
pub(super) const REFUSED: u64 = u64::MAX;

/// A prepared statement, as the client sent it.
pub(super) struct PreparedSql {
    pub sql: String,
    pub param_types: Vec<u32>,
    /// The route it was last prepared upstream for; `None`: it named no migrated table (sent untouched).
    pub route: Option<Route>,
    /// The rules generation it was judged under.
    pub generation: u64,
    /// Names a migrated table, neither a write nor refused: a candidate for shadow reads.
    pub read: bool,
}

impl PreparedSql {
    /// Whether it may name a migrated table under the rules `current`: if judged under them, whether it
    /// did; if judged under earlier rules, whether it did then or names one of these now.
    pub fn may_name_migrated(&self, current: &LiveRules) -> bool {
        self.route.is_some()
            || (self.generation != current.generation && current.rewriter.mentions_migrated_table(&self.sql))
    }
}
