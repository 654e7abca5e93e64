//! Result sets the proxy answers itself (control SQL, `SHOW dualwrite.version`): `ControlResponse`, a
//! result set of text columns, and `result_set` to build one. A leaf shared by `control`, `cdc` (STATUS
//! columns) and `version`.

use crate::protocol::requests::LocalResult;

/// A result set answered by the proxy itself: text columns (OID 25), `None` = NULL, and a tag. The session's
/// own local-answer type, so a control answer goes out as `LocalReply { results: vec![response], .. }`.
pub type ControlResponse = LocalResult;

/// A result set of text columns tagged `SELECT <rows>`, like any query that returns rows.
pub fn result_set(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> ControlResponse {
    let tag = format!("SELECT {}", rows.len());
    ControlResponse { columns: columns.iter().map(|c| c.to_string()).collect(), rows, tag }
}
