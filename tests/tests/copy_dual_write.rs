//! COPY ... FROM STDIN into a migrated table through the proxy (README: COPY): psql's `\copy` in text and
//! csv, column subsets taking defaults, and a hand-driven wire client (text, csv and binary) see exactly
//! what a plain COPY gives them, while the rows land in the old and the shadow table (compared under the
//! mapping); a rolled-back transaction, a bad row 500, a duplicate key and CopyFail leave both tables
//! untouched; v1 and v2 sessions copy in `cutover`, a v2 session in `complete` writes the shadow alone;
//! and the forms the proxy cannot dual-write (the extended protocol, as tokio-postgres's `copy_in` sends
//! it, a server file, lines after the COPY in one Query string, the old shape after `complete`) are
//! refused with 0A000 naming the migration, changing nothing. A copied key the shadow already holds is
//! updated there (the dual write's fallback to the upsert), and `COPY n` leaves out rows a BEFORE trigger
//! skipped, as a plain COPY's count does. The change-data-capture watch pairs a COPY's
//! writes of both tables and records no bypass for them (the staging table is temporary: never decoded).

mod cdc_support;
mod proxy_support;

use std::path::PathBuf;
use std::time::Duration;

use dualwrite_tests::*;
use proxy_support::{command_tags, copy, error_field, first_error, RawClient};
use tokio_postgres::Client;

const MIGRATION: &str = "users_split_name";

fn rules_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rewrite-rules/examples/users_split_name.toml")
}

const SCHEMA: &str = "
    CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text DEFAULT 'Unknown@Example.org');
    CREATE TABLE users_v2 (id int PRIMARY KEY DEFAULT nextval('users_id_seq'), first_name text, last_name text,
                           email text DEFAULT 'unknown@example.org');
    CREATE TABLE plain_users (id serial PRIMARY KEY, name text NOT NULL, email text DEFAULT 'Unknown@Example.org');
";

struct Fixture {
    db: TestDb,
    direct: Client,
    proxy: TestProxy,
}

async fn fixture() -> Fixture {
    let db = TestCluster::shared().create_database().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = TestProxy::with_rules_file(&db, rules_path()).await.unwrap();
    Fixture { db, direct, proxy }
}

impl Fixture {
    fn v2_url(&self) -> String {
        format!("{}?options=-c%20dualwrite.version%3Dv2", self.proxy.url(&self.db))
    }

    async fn raw(&self) -> RawClient {
        RawClient::connect(self.proxy.addr(), TestCluster::shared().superuser(), &self.db.name).await
    }

    /// (rows of users, rows of users_v2), read directly.
    async fn counts(&self) -> (i64, i64) {
        let count = |sql: &'static str| async move { self.direct.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) };
        (count("SELECT count(*) FROM users").await, count("SELECT count(*) FROM users_v2").await)
    }

    /// (old rows mapped forward that the shadow lacks or holds differently, shadow rows no old row maps to).
    async fn differences(&self) -> (i64, i64) {
        let mapped = "SELECT id, split_part(name, ' ', 1) AS first_name, split_part(name, ' ', 2) AS last_name, \
                      lower(email) AS email FROM users";
        let shadow = "SELECT id, first_name, last_name, email FROM users_v2";
        let count = |sql: String| async move { self.direct.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) };
        (
            count(format!("SELECT count(*) FROM (({mapped}) EXCEPT ({shadow})) d")).await,
            count(format!("SELECT count(*) FROM (({shadow}) EXCEPT ({mapped})) d")).await,
        )
    }

    async fn phase(&self, phase: &str) {
        let admin = self.proxy.connect(&self.db).await.unwrap();
        admin.simple_query(&format!("DUALWRITE PHASE {MIGRATION} {phase} FORCE")).await.unwrap();
    }
}

/// Binary COPY data of (id int4, name text) rows.
fn binary_rows(rows: &[(i32, &str)]) -> Vec<u8> {
    let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for (id, name) in rows {
        out.extend_from_slice(&2i16.to_be_bytes());
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(name.len() as i32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// (id, old email, first name, last name, shadow email) of a row in both tables.
type Joined = (i32, Option<String>, String, String, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_in_text_and_csv_with_column_subsets_lands_in_both_tables() {
    let f = fixture().await;
    let url = f.proxy.url(&f.db);
    let out = psql(
        &url,
        &["-c", "\\copy users (name, email) from pstdin"],
        Some("Ada Lovelace\tADA@X.org\nAlan Turing\t\\N\n"),
    )
    .await
    .unwrap();
    assert_eq!(out.assert_success().stdout, "COPY 2\n");
    let out = psql(
        &url,
        &["-c", "\\copy users (id, name) from pstdin with (format csv, header true)"],
        Some("id,name\n100,Grace Hopper\n101,\"Barbara Liskov\"\n"),
    )
    .await
    .unwrap();
    assert_eq!(out.assert_success().stdout, "COPY 2\n");
    let out = psql(&url, &["-c", "\\copy users from pstdin csv"], Some("200,Edsger Dijkstra,EWD@CS.UTexas.edu\n"))
        .await
        .unwrap();
    assert_eq!(out.assert_success().stdout, "COPY 1\n");

    assert_eq!(f.counts().await, (5, 5));
    assert_eq!(f.differences().await, (0, 0), "old mapped forward vs shadow, both directions");
    // The omitted columns took the old table's defaults (the sequence, the email default) once, in the
    // INSERT, and the shadow got them through the mapping.
    let rows = f
        .direct
        .query(
            "SELECT u.id, u.email, v.first_name, v.last_name, v.email FROM users u JOIN users_v2 v USING (id) \
             ORDER BY u.id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<Joined> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    let s = |v: &str| v.to_string();
    assert_eq!(
        got,
        vec![
            (1, Some(s("ADA@X.org")), s("Ada"), s("Lovelace"), Some(s("ada@x.org"))),
            (2, None, s("Alan"), s("Turing"), None),
            (100, Some(s("Unknown@Example.org")), s("Grace"), s("Hopper"), Some(s("unknown@example.org"))),
            (101, Some(s("Unknown@Example.org")), s("Barbara"), s("Liskov"), Some(s("unknown@example.org"))),
            (200, Some(s("EWD@CS.UTexas.edu")), s("Edsger"), s("Dijkstra"), Some(s("ewd@cs.utexas.edu"))),
        ]
    );
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wire_client_sees_exactly_what_a_plain_copy_answers_in_text_csv_and_binary() {
    let f = fixture().await;
    let cluster = TestCluster::shared();
    let mut through_proxy = f.raw().await;
    let mut direct = RawClient::connect(cluster.addr(), cluster.superuser(), &f.db.name).await;
    let cases: [(&str, Vec<u8>); 3] = [
        ("COPY {t} (name, email) FROM STDIN", b"Ada Lovelace\tada@x\nAlan Turing\t\\N\n".to_vec()),
        ("COPY {t} FROM STDIN WITH (FORMAT csv, DELIMITER ';')", b"10;Grace Hopper;gh@x\n".to_vec()),
        ("COPY {t} (id, name) FROM STDIN (FORMAT binary)", binary_rows(&[(20, "Edsger Dijkstra"), (21, "Tony Hoare")])),
    ];
    for (sql, data) in &cases {
        let plain = copy(&mut direct, &sql.replace("{t}", "plain_users"), data, None).await;
        let migrated = copy(&mut through_proxy, &sql.replace("{t}", "users"), data, None).await;
        assert_eq!(plain[0].0, b'G', "{sql}: {plain:?}");
        // CopyInResponse (format, column count, column formats), CommandComplete `COPY n`, ReadyForQuery.
        assert_eq!(migrated, plain, "{sql}");
    }
    assert_eq!(f.counts().await, (5, 5));
    assert_eq!(f.differences().await, (0, 0));
    // Inside a transaction block too: the same answers, with status T.
    let plain = copy(&mut direct, "BEGIN; COPY plain_users (name) FROM STDIN", b"In Block\n", None).await;
    let migrated = copy(&mut through_proxy, "BEGIN; COPY users (name) FROM STDIN", b"In Block\n", None).await;
    assert_eq!(command_tags(&plain), ["BEGIN", "COPY 1"]);
    assert_eq!(migrated, plain);
    for raw in [&mut direct, &mut through_proxy] {
        assert_eq!(command_tags(&raw.query("COMMIT").await), ["COMMIT"]);
    }
    assert_eq!(f.counts().await, (6, 6));
    assert_eq!(f.differences().await, (0, 0));
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_in_an_explicit_transaction_roll_back_from_both_tables_and_commit_to_both() {
    let f = fixture().await;
    let script = "BEGIN;
\\copy users (name, email) from stdin
Tx One\tt1@x
\\.
\\copy users (name, email) from stdin (format csv)
Tx Two,t2@x
Tx Three,t3@x
\\.
SELECT count(*) FROM users;
ROLLBACK;
SELECT count(*) FROM users;
BEGIN;
\\copy users (name, email) from stdin
Kept One\tk1@x
\\.
\\copy users (name) from stdin (format csv)
Kept Two
\\.
COMMIT;
";
    let out = psql(&f.proxy.url(&f.db), &["-At"], Some(script)).await.unwrap();
    assert_eq!(
        out.assert_success().stdout,
        "BEGIN\nCOPY 1\nCOPY 2\n3\nROLLBACK\n0\nBEGIN\nCOPY 1\nCOPY 1\nCOMMIT\n",
        "{}",
        out.stderr
    );
    assert_eq!(f.counts().await, (2, 2), "the rolled-back COPYs left nothing, the committed ones both rows");
    assert_eq!(f.differences().await, (0, 0));
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_500_or_a_duplicate_key_leaves_both_tables_untouched() {
    let f = fixture().await;
    let mut raw = f.raw().await;
    let rows = |bad: &str| -> Vec<u8> {
        (1..=1000)
            .map(|i| if i == 500 { format!("{bad}\n") } else { format!("{i},Name {i}\n") })
            .collect::<String>()
            .into_bytes()
    };
    // A value the column's type refuses: the COPY itself fails at line 500.
    let answer = copy(&mut raw, "COPY users (id, name) FROM STDIN (FORMAT csv)", &rows("x,Bad Row"), None).await;
    let (_, error) = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_field(error, b'C'), "22P02");
    assert_eq!(error_field(error, b'M'), "invalid input syntax for type integer: \"x\"");
    assert!(error_field(error, b'W').contains("line 500"), "{}", error_field(error, b'W'));
    assert_eq!(answer.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"GEZ");
    assert_eq!(f.counts().await, (0, 0));
    // A duplicate key: the dual-write INSERT fails after the data is in; the client sees only the error.
    let answer = copy(&mut raw, "COPY users (id, name) FROM STDIN (FORMAT csv)", &rows("1,Again"), None).await;
    assert_eq!(answer.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"GEZ", "no `COPY n` before the error");
    let (_, error) = &answer[1];
    assert_eq!(error_field(error, b'C'), "23505");
    assert_eq!(error_field(error, b'M'), "duplicate key value violates unique constraint \"users_pkey\"");
    assert_eq!(f.counts().await, (0, 0));
    // The session copies normally afterwards.
    let answer = copy(&mut raw, "COPY users (id, name) FROM STDIN (FORMAT csv)", &rows("500,Name 500"), None).await;
    assert_eq!(command_tags(&answer), ["COPY 1000"]);
    assert_eq!(f.counts().await, (1000, 1000));
    assert_eq!(f.differences().await, (0, 0));
    f.proxy.stop().await.unwrap();
}

/// The dual write first tries the shadow with plain INSERTs and, when a row is already there, runs the
/// upsert any INSERT gets instead (rewrite-rules `copy_block`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_key_the_shadow_already_holds_is_updated_there_as_an_insert_would_update_it() {
    let f = fixture().await;
    // A shadow row without its old row, as a backfill batch racing a DELETE leaves one until its sweep.
    f.direct.batch_execute("INSERT INTO users_v2 VALUES (7, 'Stale', 'Row', 'stale@x')").await.unwrap();
    let rows: String = (5..=9).map(|i| format!("{i},Name {i},E{i}@X\n")).collect();
    let out = psql(&f.proxy.url(&f.db), &["-c", "\\copy users (id, name, email) from pstdin csv"], Some(&rows))
        .await
        .unwrap();
    assert_eq!(out.assert_success().stdout, "COPY 5\n");
    assert_eq!(f.counts().await, (5, 5));
    assert_eq!(f.differences().await, (0, 0), "the stale shadow row now mirrors the copied one");
    // The same COPY again: the client's own duplicate key in the old table is its error, as for a plain COPY.
    let out = psql(&f.proxy.url(&f.db), &["-c", "\\copy users (id, name, email) from pstdin csv"], Some(&rows))
        .await
        .unwrap();
    assert!(out.stderr.contains("duplicate key value violates unique constraint \"users_pkey\""), "{}", out.stderr);
    assert_eq!(f.counts().await, (5, 5));
    f.proxy.stop().await.unwrap();
}

/// A COPY's sync into the phase's source of truth (the old table for a v2 COPY in `dual_write`, the shadow
/// for a v1 COPY in `cutover`) is never an upsert: a key the truth holds and the table copied into lacks
/// (written behind the proxy's back) fails the COPY as a COPY into one table would, and nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_key_the_source_of_truth_already_holds_fails_the_copy_and_its_row_is_kept() {
    let f = fixture().await;
    let admin = f.proxy.connect(&f.db).await.unwrap();
    backfill_until_done(&admin, MIGRATION).await;
    f.direct.batch_execute("INSERT INTO users VALUES (7, 'Truth Row', 'truth@x')").await.unwrap();
    let rows: String = (5..=9).map(|i| format!("{i},First{i},Last{i},e{i}@x\n")).collect();
    let copy = "\\copy users (id, first_name, last_name, email) from pstdin csv";
    let out = psql(&f.v2_url(), &["-c", copy], Some(&rows)).await.unwrap();
    assert!(out.stderr.contains("duplicate key value violates unique constraint \"users_pkey\""), "{}", out.stderr);
    assert_eq!(f.counts().await, (1, 0), "the failed COPY kept nothing");
    let kept: String = f.direct.query_one("SELECT name FROM users WHERE id = 7", &[]).await.unwrap().get(0);
    assert_eq!(kept, "Truth Row");

    f.direct.batch_execute("INSERT INTO users_v2 VALUES (7, 'Truth', 'Row', 'truth@x')").await.unwrap();
    f.phase("cutover").await;
    f.direct.batch_execute("INSERT INTO users_v2 VALUES (17, 'Shadow', 'Row', 'shadow@x')").await.unwrap();
    let rows: String = (15..=19).map(|i| format!("{i},Name {i},E{i}@X\n")).collect();
    let out = psql(&f.proxy.url(&f.db), &["-c", "\\copy users (id, name, email) from pstdin csv"], Some(&rows))
        .await
        .unwrap();
    assert!(out.stderr.contains("duplicate key value violates unique constraint \"users_v2_pkey\""), "{}", out.stderr);
    assert_eq!(f.counts().await, (1, 2), "the failed COPY kept nothing");
    let kept: String = f.direct.query_one("SELECT first_name FROM users_v2 WHERE id = 17", &[]).await.unwrap().get(0);
    assert_eq!(kept, "Shadow");
    f.proxy.stop().await.unwrap();
}

/// `COPY n` counts the rows written, as a plain COPY does: not the rows a BEFORE trigger skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_counts_the_rows_written_less_those_a_before_trigger_skipped_as_a_plain_copy_does() {
    let f = fixture().await;
    f.direct
        .batch_execute(
            "CREATE FUNCTION skip_drafts() RETURNS trigger LANGUAGE plpgsql AS
                 $$BEGIN IF NEW.name LIKE 'draft%' THEN RETURN NULL; END IF; RETURN NEW; END$$;
             CREATE TRIGGER skip_drafts BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION skip_drafts();
             CREATE TRIGGER skip_drafts BEFORE INSERT ON plain_users FOR EACH ROW EXECUTE FUNCTION skip_drafts();",
        )
        .await
        .unwrap();
    let rows = "Ada Lovelace\ndraft one\nAlan Turing\ndraft two\nGrace Hopper\n";
    for table in ["users", "plain_users"] {
        let copy = format!("\\copy {table} (name) from pstdin");
        let out = psql(&f.proxy.url(&f.db), &["-c", &copy], Some(rows)).await.unwrap();
        assert_eq!(out.assert_success().stdout, "COPY 3\n", "{table}");
    }
    assert_eq!(f.counts().await, (3, 3));
    assert_eq!(f.differences().await, (0, 0));
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_fail_from_the_client_aborts_cleanly_and_the_session_copies_again() {
    let f = fixture().await;
    let mut raw = f.raw().await;
    let data = b"Ada Lovelace\tada@x\nAlan Turing\tat@x\n";
    let answer = copy(&mut raw, "COPY users (name, email) FROM STDIN", data, Some("client gave up")).await;
    assert_eq!(answer.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"GEZ");
    assert_eq!(first_error(&answer), Some(("57014".into(), "COPY from stdin failed: client gave up".into())));
    assert_eq!(answer[2].1, b"I");
    assert_eq!(f.counts().await, (0, 0));
    let answer = copy(&mut raw, "COPY users (name, email) FROM STDIN", data, None).await;
    assert_eq!(command_tags(&answer), ["COPY 2"]);
    assert_eq!(f.counts().await, (2, 2));
    assert_eq!(f.differences().await, (0, 0));
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_versions_copy_in_cutover_and_the_new_shape_writes_the_shadow_alone_after_complete() {
    let f = fixture().await;
    f.phase("cutover").await;
    let out =
        psql(&f.proxy.url(&f.db), &["-c", "\\copy users (name, email) from pstdin csv"], Some("Old Shape,OS@X\n"))
            .await
            .unwrap();
    assert_eq!(out.assert_success().stdout, "COPY 1\n");
    let out = psql(
        &f.v2_url(),
        &["-c", "\\copy users (first_name, last_name, email) from pstdin csv"],
        Some("New,Shape,ns@x\nOther,Row,or@x\n"),
    )
    .await
    .unwrap();
    assert_eq!(out.assert_success().stdout, "COPY 2\n");
    assert_eq!(f.counts().await, (3, 3));
    assert_eq!(f.differences().await, (0, 0), "v1 rows went forward, v2 rows backward");
    let name: String = f.direct.query_one("SELECT name FROM users WHERE email = 'ns@x'", &[]).await.unwrap().get(0);
    assert_eq!(name, "New Shape");

    f.phase("complete").await;
    let out = psql(&f.v2_url(), &["-c", "\\copy users (first_name, last_name) from pstdin csv"], Some("Only,Shadow\n"))
        .await
        .unwrap();
    assert_eq!(out.assert_success().stdout, "COPY 1\n");
    assert_eq!(f.counts().await, (3, 4), "after complete only the shadow is written");
    let mut raw = f.raw().await;
    let answer = copy(&mut raw, "COPY users (name) FROM STDIN", b"Too Late\n", None).await;
    assert_eq!(
        first_error(&answer),
        Some((
            "0A000".into(),
            format!(
                "dualwrite: statement refused for migration \"{MIGRATION}\": the migration is complete, so writes in \
                 the old version's shape are no longer accepted"
            )
        ))
    );
    assert_eq!(f.counts().await, (3, 4));
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_forms_the_proxy_cannot_dual_write_are_refused_and_change_nothing() {
    let f = fixture().await;
    let refused = |reason: &str| {
        format!(
            "dualwrite: statement refused for migration \"{MIGRATION}\": this form of COPY FROM into a migrated \
             table is not supported ({reason})"
        )
    };
    // tokio-postgres sends COPY through the extended protocol (Parse, Bind, Execute).
    let client = f.proxy.connect(&f.db).await.unwrap();
    let error = client.copy_in::<_, bytes::Bytes>("COPY users (name) FROM STDIN").await.err().expect("refused");
    let db_error = error.as_db_error().expect("a server error");
    assert_eq!(db_error.code().code(), "0A000");
    assert_eq!(
        db_error.message(),
        refused(
            "through the extended protocol; send COPY ... FROM STDIN as a simple Query (psql's \\copy, psycopg's \
             cursor.copy, pgjdbc's CopyManager)"
        )
    );
    assert_eq!(client.simple_query("SELECT 1").await.unwrap().len(), 3, "the session goes on");

    let mut raw = f.raw().await;
    let answer = copy(&mut raw, "COPY users FROM '/tmp/users.csv' (FORMAT csv)", b"", None).await;
    assert_eq!(
        first_error(&answer),
        Some(("0A000".into(), refused("COPY FROM a server file; use COPY ... FROM STDIN (psql's \\copy)")))
    );
    let answer = copy(&mut raw, "COPY users FROM PROGRAM 'cat /tmp/users.csv'", b"", None).await;
    assert_eq!(
        first_error(&answer),
        Some(("0A000".into(), refused("COPY FROM PROGRAM; use COPY ... FROM STDIN (psql's \\copy)")))
    );
    // A second line after `COPY ... FROM STDIN;` is a statement to the server; the proxy cannot read it.
    let answer = raw.query("COPY plain_users FROM STDIN;\nDELETE FROM users").await;
    let (code, message) = first_error(&answer).expect("refused");
    assert_eq!(code, "0A000");
    assert!(message.ends_with("(statements on the lines after COPY ... FROM STDIN in one Query string)"), "{message}");
    assert_eq!(f.counts().await, (0, 0));
    f.proxy.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_data_capture_watch_pairs_a_copy_and_records_no_bypass() {
    let f = cdc_support::fixture().await;
    let proxy = cdc_support::proxy(&f, "alert", None).await;
    cdc_support::until_watching(&f.direct).await;
    let rows: String = (1..=300).map(|i| format!("{i},Name {i},E{i}@X,a{}\n", i % 3 + 1)).collect();
    let out = psql(&proxy.url(&f.db), &["-c", "\\copy users (id, name, email, account) from pstdin csv"], Some(&rows))
        .await
        .unwrap();
    assert_eq!(out.assert_success().stdout, "COPY 300\n");
    assert_eq!(cdc_support::difference(&f.direct).await, 0);
    // A one-sided write after it, committed later: once the watch recorded it, it has read the COPY's
    // transaction too, and that one gave no bypass.
    f.direct.batch_execute("UPDATE users SET email = 'marker@x' WHERE id = 7").await.unwrap();
    eventually(Duration::from_secs(30), "the marker bypass is recorded", || async {
        !cdc_support::bypasses(&f.direct).await.is_empty()
    })
    .await;
    assert_eq!(
        cdc_support::bypasses(&f.direct).await,
        vec![("update".into(), "old".into(), Some(r#"{"id": 7}"#.into()), false)]
    );
    proxy.stop().await.unwrap();
}
