//! Schema changes announced as they commit. The schema watch (`schema_watch`) checks the migrations' tables
//! every second, so a change made between two checks was acted on up to a second late. When the control
//! role may create event triggers (a superuser), every instance makes sure two exist in the state
//! database, both running [`FUNCTION`]: `dualwrite_schema_changed` (`ddl_command_end`) and
//! `dualwrite_schema_dropped` (`sql_drop`). For any DDL that touches an object outside a session's
//! temporary schema (a default set, a NOT NULL dropped, a trigger or function created or dropped), the
//! function sends `NOTIFY dualwrite_schema`, which Postgres delivers when the DDL commits, and never
//! anything if the DDL rolls back. The state listener LISTENs on that channel and wakes the schema watch
//! for a full check at once (unseen writers included), so what a DDL did is acted on a round trip after
//! its commit rather than at the next check. The periodic checks go on either way: they are what catches
//! a change while the listener reconnects, and the only way without event triggers.
//!
//! The function can never fail the DDL it watches: any error it meets is swallowed, since refusing the
//! application's DDL because of the proxy's own objects would be worse than a check a second later.
//! `limits.schema_check_on_ddl = false` keeps an instance from creating them (existing ones are left:
//! `DROP EVENT TRIGGER` removes them, as does `DROP SCHEMA dualwrite CASCADE`).

use std::time::Duration;

use tokio_postgres::Client;

use super::StateError;

/// The channel a committed schema change is announced on (payload: the command tag).
pub const SCHEMA_CHANNEL: &str = "dualwrite_schema";

/// The function both event triggers run.
pub const FUNCTION: &str = "dualwrite.notify_schema_changed";

/// The event triggers: name and event.
pub const TRIGGERS: [(&str, &str); 2] =
    [("dualwrite_schema_changed", "ddl_command_end"), ("dualwrite_schema_dropped", "sql_drop")];

/// Serialises instances creating them at once (the same key hashing as the schema's own lock).
const LOCK: &str = "dualwrite:ddl_watch";

/// Whether committed schema changes wake the schema watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdlWatch {
    /// Both event triggers exist and are enabled.
    Active,
    /// They do not, and the control role may not create them (event triggers need a superuser).
    NotPermitted,
}

/// [`ensure`], at an instance's start, and logs what it gives (`periodic`: the check interval that remains
/// the only one without the triggers). A failure is logged, not returned: the periodic checks still run.
pub async fn set_up(client: &mut Client, periodic: Duration) {
    match ensure(client).await {
        Ok(DdlWatch::Active) => tracing::info!("schema changes wake the schema watch at their commit (event triggers)"),
        Ok(DdlWatch::NotPermitted) => tracing::info!(
            ?periodic,
            "schema changes are found by the schema watch's periodic check only: its event triggers are missing \
             or disabled, and creating them needs a superuser"
        ),
        Err(error) => tracing::warn!(
            %error,
            ?periodic,
            "cannot create the schema watch's event triggers; schema changes are found by its periodic check only"
        ),
    }
}

/// Makes sure the function is current and both event triggers exist, when the control role is a superuser;
/// otherwise reports whether another role created them.
pub async fn ensure(client: &mut Client) -> Result<DdlWatch, StateError> {
    let superuser: bool =
        client.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[]).await?.get(0);
    if !superuser {
        return Ok(match active(client).await? {
            true => DdlWatch::Active,
            false => DdlWatch::NotPermitted,
        });
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&LOCK]).await?;
    // Replaced only when this build's body differs: every replacement is DDL the triggers announce.
    let body = function_body();
    let current: Option<String> = tx
        .query_one("SELECT (SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1))", &[&format!("{FUNCTION}()")])
        .await?
        .get(0);
    if current.as_deref() != Some(body.as_str()) {
        tx.batch_execute(&function_ddl(&body)).await?;
    }
    for (name, event) in TRIGGERS {
        let exists: bool =
            tx.query_one("SELECT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = $1)", &[&name]).await?.get(0);
        if !exists {
            tx.batch_execute(&format!("CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION {FUNCTION}()")).await?;
        }
    }
    tx.commit().await?;
    Ok(match active(client).await? {
        true => DdlWatch::Active,
        // An operator disabled one (ALTER EVENT TRIGGER ... DISABLE): theirs to decide.
        false => DdlWatch::NotPermitted,
    })
}

/// Both event triggers exist and fire (enabled for ordinary sessions).
async fn active(client: &Client) -> Result<bool, StateError> {
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _)| *name).collect();
    let enabled: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY($1) AND evtenabled IN ('O', 'A')",
            &[&names],
        )
        .await?
        .get(0);
    Ok(enabled == TRIGGERS.len() as i64)
}

/// The function's body: a NOTIFY for DDL on anything but a session's temporary objects (an application
/// creating temporary tables must not set every instance checking; Postgres reports their schema as
/// `pg_temp`), and for no command that cannot change what the checks read (a materialized view's refresh,
/// which applications run often; privileges, comments, labels); never an error.
fn function_body() -> String {
    format!(
        r#"
BEGIN
    IF TG_TAG IN ('REFRESH MATERIALIZED VIEW', 'GRANT', 'REVOKE', 'COMMENT', 'SECURITY LABEL') THEN
        RETURN;
    END IF;
    IF TG_EVENT = 'sql_drop' THEN
        IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() WHERE NOT is_temporary) THEN
            PERFORM pg_notify('{SCHEMA_CHANNEL}', TG_TAG);
        END IF;
    ELSIF EXISTS (SELECT FROM pg_event_trigger_ddl_commands()
                  WHERE schema_name IS NULL OR schema_name NOT LIKE 'pg\_temp%') THEN
        PERFORM pg_notify('{SCHEMA_CHANNEL}', TG_TAG);
    END IF;
EXCEPTION WHEN OTHERS THEN
    -- Never fail the DDL: the schema watch's periodic check still sees the change.
    NULL;
END
"#
    )
}

/// The function's DDL, its body as [`function_body`].
fn function_ddl(body: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS event_trigger \
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $dualwrite${body}$dualwrite$"
    )
}
