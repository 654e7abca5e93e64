//! The SQL side of the watch, on its ordinary (tokio-postgres) control connection: `wal_level`, the
//! publication limited to the watched tables, the logical slot (`pgoutput`), and the slot's WAL figures.
//! The slot is read by the streaming replication protocol (see `stream`); it keeps the confirmed position
//! across restarts, and the watch confirms only transactions it has handled and recorded.

use tokio_postgres::Client;

use super::decoder::Lsn;

/// The publication of the watched tables (one per database).
pub const PUBLICATION: &str = "dualwrite_cdc";

/// `wal_level` of the server.
pub async fn wal_level(client: &Client) -> Result<String, tokio_postgres::Error> {
    Ok(client.query_one("SELECT current_setting('wal_level')", &[]).await?.get(0))
}

/// The slot of this database's watch: slots are per cluster, so the name carries the database's oid.
pub async fn slot_name(client: &Client) -> Result<String, tokio_postgres::Error> {
    let oid: String =
        client.query_one("SELECT oid::text FROM pg_database WHERE datname = current_database()", &[]).await?.get(0);
    Ok(format!("dualwrite_cdc_{oid}"))
}

/// Makes the publication hold exactly `tables`, partitioned ones by their own name (quoted, possibly schema-qualified names built from the
/// rules' AST, never client text).
pub async fn sync_publication(client: &Client, tables: &[String]) -> Result<(), tokio_postgres::Error> {
    let exists = client.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&PUBLICATION]).await?.is_some();
    let list = tables.join(", ");
    // A partitioned table's changes are published under its own name rather than its partitions': the
    // watch knows the migrated table by that name, and a write naming a partition is one of its rows.
    let sql = if exists {
        format!(
            "ALTER PUBLICATION {PUBLICATION} SET TABLE {list}; \
             ALTER PUBLICATION {PUBLICATION} SET (publish_via_partition_root = true)"
        )
    } else {
        format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE {list} WITH (publish_via_partition_root = true)")
    };
    client.batch_execute(&sql).await
}

pub async fn drop_publication(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("DROP PUBLICATION IF EXISTS {PUBLICATION}")).await
}

/// Creates the slot if it does not exist; true if it was created now.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<bool, tokio_postgres::Error> {
    if client.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await?.is_some() {
        return Ok(false);
    }
    client.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await?;
    Ok(true)
}

/// Drops the slot if it exists; true if it did.
pub async fn drop_slot(client: &Client, slot: &str) -> Result<bool, tokio_postgres::Error> {
    let dropped = client
        .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await?;
    Ok(dropped > 0)
}

/// How far the slot trails the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotFigures {
    /// WAL written since the slot's confirmed position.
    pub lag_bytes: f64,
    /// WAL the slot keeps from being recycled (from its restart position).
    pub retained_bytes: f64,
    pub confirmed: Lsn,
}

pub async fn figures(client: &Client, slot: &str) -> Result<Option<SlotFigures>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT coalesce(pg_current_wal_lsn() - confirmed_flush_lsn, 0)::float8, \
                    coalesce(pg_current_wal_lsn() - restart_lsn, 0)::float8, \
                    coalesce(confirmed_flush_lsn, '0/0')::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|row| SlotFigures {
        lag_bytes: row.get(0),
        retained_bytes: row.get(1),
        confirmed: row.get::<_, String>(2).parse().unwrap_or_default(),
    }))
}
