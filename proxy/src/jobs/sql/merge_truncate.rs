//! The check behind the change-data-capture watch's judgement of a TRUNCATE of one merge source. The proxy
//! follows such a TRUNCATE with a row-level sync of the shadow (README: Merging tables), which the
//! write-ahead log shows as nothing at all when the shadow held none of the source's rows; so the log
//! cannot tell the proxy's TRUNCATE from one that bypassed it, and the tables are asked instead.

use super::{ident, joined, statement};
use crate::jobs::mapping::CompiledMapping;

impl CompiledMapping {
    /// `SELECT EXISTS (...)`: whether the shadow holds a row that, for a key merge source `index` does not
    /// hold, still carries one of that source's columns. False once the proxy's sync ran; true after a
    /// TRUNCATE of the source that bypassed it, while the shadow held its rows. Only that source's columns
    /// are looked at: what another source's TRUNCATE (or DELETE) committed later left behind is that
    /// change's own to report, not this one's. A merge's source `index` only (see `sources`).
    pub fn merge_source_left_behind(&self, index: usize) -> String {
        let (o, s) = (ident("__dw_o"), ident("__dw_s"));
        let join = joined(self.key.iter().map(|key| format!("{o}.{key} = {s}.{key}")), " AND ");
        let (table, _, writes) = &self.sources[index];
        let shows: Vec<String> = writes
            .iter()
            .map(|&i| &self.shadow_columns[i])
            .filter(|c| !self.key.contains(c))
            .map(|c| format!("{s}.{c} IS NOT NULL"))
            .collect();
        statement(format!(
            "SELECT EXISTS (SELECT 1 FROM {shadow} AS {s} WHERE ({shows}) \
             AND NOT EXISTS (SELECT 1 FROM {table} AS {o} WHERE {join}))",
            shadow = self.shadow,
            shows = joined(shows, " OR "),
        ))
    }
}
