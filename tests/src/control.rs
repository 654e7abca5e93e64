//! Control SQL answers as the integration tests read them: the one row of a `DUALWRITE ...` command by
//! column name, and a server error's SQLSTATE and message.

/// Runs `sql` (a control command answering one row) as a simple Query and returns the row as (column,
/// value) pairs; panics naming the command on an error.
pub async fn control(client: &tokio_postgres::Client, sql: &str) -> Vec<(String, Option<String>)> {
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
    columns.into_iter().zip(crate::simple_rows(&messages).remove(0)).collect()
}

/// The value of `column` in a row `control` returned, `None` when NULL or absent.
pub fn value<'a>(row: &'a [(String, Option<String>)], column: &str) -> Option<&'a str> {
    row.iter().find(|(c, _)| c == column).and_then(|(_, v)| v.as_deref())
}

/// (SQLSTATE, message) of a server error; panics if `e` is not one.
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// Starts migration `migration`'s backfill through `admin` and waits (up to a minute, a bound against a hung
/// test) until `DUALWRITE STATUS` reports it done.
pub async fn backfill_until_done(admin: &tokio_postgres::Client, migration: &str) {
    control(admin, &format!("DUALWRITE BACKFILL {migration} START")).await;
    crate::eventually(std::time::Duration::from_secs(60), "backfill done", || async {
        // STATUS has a row per migration: this one's.
        let messages = admin.simple_query("DUALWRITE STATUS").await.unwrap_or_else(|e| panic!("STATUS: {e}"));
        messages.iter().any(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
                if r.get("migration") == Some(migration) && r.get("backfill_state") == Some("done"))
        })
    })
    .await;
}
