//! Control SQL answers as the integration tests read them: the one row of a `DUALWRITE ...` command by
//! column name, and a server error's SQLSTATE and message.

/// The one-row answer of a control command, as (column, value) pairs.
pub struct ControlRow(pub Vec<(String, Option<String>)>);

impl ControlRow {
    /// The value of `column`, `None` when NULL or absent.
    pub fn get(&self, column: &str) -> Option<&str> {
        self.0.iter().find(|(c, _)| c == column).and_then(|(_, v)| v.as_deref())
    }
}

impl std::fmt::Debug for ControlRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Runs `sql` (a control command answering one row) as a simple Query; panics naming it on an error.
pub async fn control_row(client: &tokio_postgres::Client, sql: &str) -> ControlRow {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns: Vec<String> = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::RowDescription(d) => {
                Some(d.iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .expect("a result set");
    ControlRow(columns.into_iter().zip(crate::simple_rows(&messages).remove(0)).collect())
}

/// (SQLSTATE, message) of a server error; panics if `e` is not one.
pub fn server_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}
