//! `repair` of a merge's sources from the shadow, once the shadow is the source of truth (`cutover`): the
//! inverse of how the merge fills the shadow, as the proxy's mirrored writes of the shadow apply it (README:
//! Merging tables). Per source, a key's row is upserted through the source's backward mapping where the
//! shadow row holds any of the source's non-key columns, and deleted where the shadow row holds none of
//! them or is gone.

use super::{ident, joined, list, statement};
use crate::jobs::mapping::CompiledMapping;

impl CompiledMapping {
    /// Rebuilds every source's rows of the keys in `$1` (a jsonb array of key objects) from the shadow rows,
    /// read `FOR SHARE` and never written. Run under REPEATABLE READ (see `repair`). Returns (keys whose
    /// row some source upserted, keys whose row some source deleted).
    pub(super) fn repair_merge_sources(&self) -> String {
        let (keys_cte, src) = (ident("__dw_keys"), ident("__dw_src"));
        let (o, s) = (ident("__dw_o"), ident("__dw_s"));
        let keys = self.key_list(None);
        let in_keys = format!("{} IN (SELECT {keys} FROM {keys_cte})", self.key_row(None));
        let s_in_keys = format!("{} IN (SELECT {keys} FROM {keys_cte})", self.key_row(Some(&s)));
        let s_keys = self.key_list(Some(&s));
        let join = joined(self.key.iter().map(|key| format!("{o}.{key} = {s}.{key}")), " AND ");
        let mut ctes = vec![
            format!(
                "{keys_cte} AS (SELECT {keys} FROM jsonb_populate_recordset(NULL::{}, $1::text::jsonb))",
                self.shadow
            ),
            format!("{src} AS MATERIALIZED (SELECT * FROM {} WHERE {in_keys} FOR SHARE)", self.shadow),
        ];
        let (mut ups, mut dels) = (Vec::new(), Vec::new());
        for (i, (table, columns, writes)) in self.sources.iter().enumerate() {
            let exprs: Vec<_> = columns
                .iter()
                .map(|c| {
                    let at = self.old_columns.iter().position(|o| o == c).expect("a source's column is an old column");
                    &self.backward[at]
                })
                .collect();
            let own: Vec<_> =
                writes.iter().map(|&w| &self.shadow_columns[w]).filter(|c| !self.key.contains(c)).collect();
            let holds = |qualifier: &dyn std::fmt::Display| {
                joined(own.iter().map(|c| format!("{qualifier}.{c} IS NOT NULL")), " OR ")
            };
            let non_key: Vec<_> = columns.iter().filter(|c| !self.key.contains(c)).collect();
            let on_conflict = if non_key.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!("DO UPDATE SET {}", list(non_key.iter().map(|c| format!("{c} = EXCLUDED.{c}"))))
            };
            let (u, d) = (ident(&format!("__dw_up{}", i + 1)), ident(&format!("__dw_del{}", i + 1)));
            ctes.push(format!(
                "{u} AS (INSERT INTO {table} ({}) SELECT {} FROM {src} AS {alias} WHERE {} ON CONFLICT ({keys}) \
                 {on_conflict} RETURNING {keys})",
                list(columns),
                list(exprs),
                holds(&self.shadow_alias),
                alias = self.shadow_alias,
            ));
            ctes.push(format!(
                "{d} AS (DELETE FROM {table} AS {s} WHERE {s_in_keys} AND NOT EXISTS (SELECT 1 FROM {src} AS {o} \
                 WHERE {join} AND ({})) RETURNING {s_keys})",
                holds(&o),
            ));
            ups.push(format!("SELECT {keys} FROM {u}"));
            dels.push(format!("SELECT {keys} FROM {d}"));
        }
        let (u, d) = (ident("__dw_u"), ident("__dw_d"));
        statement(format!(
            "WITH {} SELECT (SELECT count(*) FROM ({}) AS {u}), (SELECT count(*) FROM ({}) AS {d})",
            list(ctes),
            joined(ups, " UNION "),
            joined(dels, " UNION ")
        ))
    }
}
