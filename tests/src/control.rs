//! Control SQL answers as the integration tests read them: the one row of a `DUALWRITE ...` command by
//! column name, and a server error's SQLSTATE and message.

/// Runs `sql` (a control command answering one row) as a simple Query and returns the row as (column,
/// value) pairs; panics naming the command on an error.
pub async fn control(client: &tokio_postgres::Client, sql: &str) -> Vec<(String, Option<String>)> {
    control_rows(client, sql).await.into_iter().next().unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Every row of a control command's answer as (column, value) pairs; panics naming the command on an error.
pub async fn control_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<(String, Option<String>)>> {
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
    crate::simple_rows(&messages).into_iter().map(|row| columns.iter().cloned().zip(row).collect()).collect()
}

/// Migration `migration`'s row of `DUALWRITE STATUS`; panics if there is none.
pub async fn status_of(admin: &tokio_postgres::Client, migration: &str) -> Vec<(String, Option<String>)> {
    control_rows(admin, "DUALWRITE STATUS")
        .await
        .into_iter()
        .find(|row| value(row, "migration") == Some(migration))
        .unwrap_or_else(|| panic!("no STATUS row for {migration}"))
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
        value(&status_of(admin, migration).await, "backfill_state") == Some("done")
    })
    .await;
}

/// Whether a proxy has registered migration `migration` in the database `direct` is connected to (the state
/// schema may not exist yet: then it has not).
pub async fn registered(direct: &tokio_postgres::Client, migration: &str) -> bool {
    direct
        .query_one("SELECT count(*) FROM dualwrite.migrations WHERE name = $1", &[&migration])
        .await
        .is_ok_and(|r| r.get::<_, i64>(0) == 1)
}
