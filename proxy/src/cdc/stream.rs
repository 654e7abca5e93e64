//! The replication connection that streams the slot, through the `pgwire-replication` crate (tokio-postgres
//! does not speak the replication sub-protocol). Its events become `decoder::Message`s again so that the
//! pure `transaction::Assembler` sees one message stream; the crate splits out transaction boundaries and
//! logical messages, everything else is handed over raw and decoded by `decoder`.
//!
//! Why streaming and not SQL polling of `pg_logical_slot_peek_binary_changes`: every SQL call starts a
//! new decoding session at the slot's *restart* position, which only moves when the server logs a
//! running-transactions record (every 15 s under load on PostgreSQL 15), so each poll re-reads up to 15 s
//! of WAL. Measured on this project's 2-core machine under pgbench (about 3.6 MB/s of WAL): each peek
//! took 100-300 ms and each advance 70-200 ms with 20-50 MB retained, for about half the TPS. A stream
//! decodes each WAL record once.
//!
//! A multi-host URL: the replication connection goes to the host the URL's `target_session_attrs`
//! accepts, found as the data plane finds it (`PgTarget::find_primary`), so after a failover the watch
//! streams from the new primary. Its logical slot does not survive the failover (PostgreSQL 15 does not
//! copy slots to standbys); `gap` notices that and says so.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use tokio_postgres::config::Host;

use crate::libpq_tls::{Roots, SslMode, TlsFiles};
use crate::pg_client::PgTarget;

use super::decoder::{self, Lsn, Message};
use super::slot::PUBLICATION;

/// What the stream delivers.
#[derive(Debug)]
pub enum Event {
    Message(Message),
    /// The server has sent everything up to `wal_end`.
    KeepAlive {
        wal_end: Lsn,
    },
}

pub struct Stream {
    client: ReplicationClient,
}

/// How often the confirmed position is reported to the server.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Server-side TCP keepalives of the watch's connections (seconds idle, between probes, probes): a
/// leader whose host vanished without closing its sockets (power loss, partition) has its walsender
/// and its advisory lock released after about 11 s instead of the kernel's default two hours. A killed
/// process needs none of this: the kernel closes its sockets and Postgres notices at once.
pub const KEEPALIVES: [(&str, u32); 3] =
    [("tcp_keepalives_idle", 5), ("tcp_keepalives_interval", 2), ("tcp_keepalives_count", 3)];

/// Where the replication connection goes: the URL's host, or with several the one its
/// `target_session_attrs` accepts (the first that answers for `any`).
async fn replication_host(target: &PgTarget) -> anyhow::Result<(String, u16)> {
    let config = target.config();
    if config.get_hosts().len() > 1 {
        let (_, host) = target.find_primary().await?;
        return Ok((host.host, host.port));
    }
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    Ok((host, config.get_ports().first().copied().unwrap_or(5432)))
}

/// The replication connection's settings from the control connection's: same user, password, database,
/// and the URL's TLS settings (sslmode, sslrootcert, sslcert/sslkey; `verify-full` checks `host`'s name).
fn replication_config(target: &PgTarget, (host, port): (String, u16), slot: &str) -> anyhow::Result<ReplicationConfig> {
    let config = target.config();
    let user = config.get_user().context("the control connection names no user")?.to_string();
    let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    let database = config.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone());
    let tls = tls_config(target.ssl_mode(), target.tls_files(), &host)?;
    let mut replication = ReplicationConfig::new(host, user, password, database, slot, PUBLICATION);
    replication.port = port;
    replication.tls = tls;
    replication.status_interval = STATUS_INTERVAL;
    replication.idle_wakeup_interval = STATUS_INTERVAL;
    replication.application_name = Some("dualwrite cdc watch".to_string());
    replication.options =
        Some(KEEPALIVES.iter().map(|(name, value)| format!("-c {name}={value}")).collect::<Vec<_>>().join(" "));
    Ok(replication)
}

/// The URL's TLS settings for `pgwire-replication`, which takes file names (it builds its own rustls
/// config from them) and checks a certificate chain only in its verify modes. So a root file given
/// with `prefer` or `require` (a chain check, as in libpq and the rest of the proxy) becomes `verify-ca`:
/// stricter for `prefer` (no plaintext fallback: the watch then needs a server that accepts TLS), never
/// weaker. `verify-full` checks the name the URL connects to, a DNS name or an IP address (given as the
/// server name so that the crate checks the certificate's IP address entry rather than refusing it).
fn tls_config(mode: SslMode, files: &TlsFiles, host: &str) -> anyhow::Result<TlsConfig> {
    let roots = match &files.roots {
        None => None,
        Some(Roots::File(path)) => Some(path.clone()),
        Some(Roots::System) => Some(system_roots_file()?),
    };
    let tls = match (mode, roots) {
        (SslMode::Disable, _) => return Ok(TlsConfig::disabled()),
        (SslMode::Prefer, None) => TlsConfig { mode: pgwire_replication::SslMode::Prefer, ..TlsConfig::default() },
        (SslMode::Require, None) => TlsConfig::require(),
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(roots)) => TlsConfig::verify_ca(Some(roots)),
        (SslMode::VerifyFull, Some(roots)) => TlsConfig::verify_full(Some(roots)).with_sni_hostname(host),
        // `libpq_tls` always resolves a root file (or the system's) for the verify modes.
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            anyhow::bail!("sslmode={} without root certificates", mode.as_str())
        }
    };
    Ok(match &files.identity {
        Some((cert, key)) => tls.with_client_cert(cert, key),
        None => tls,
    })
}

/// `sslrootcert=system` for a client that takes one PEM file: OpenSSL's default bundle, as
/// `rustls-native-certs` finds it for the rest of the proxy (`SSL_CERT_FILE` honoured).
fn system_roots_file() -> anyhow::Result<PathBuf> {
    openssl_probe::probe().cert_file.context(
        "sslrootcert=system: the replication connection needs the system's roots as one PEM file, and none \
         was found (set SSL_CERT_FILE to the bundle)",
    )
}

impl Stream {
    /// Starts streaming `slot` from its confirmed position.
    pub async fn start(target: &PgTarget, slot: &str) -> anyhow::Result<Stream> {
        let what = || format!("cannot open the replication connection (sslmode={})", target.ssl_mode().as_str());
        let host = replication_host(target).await.with_context(what)?;
        let mut client = ReplicationClient::connect(replication_config(target, host, slot).with_context(what)?)
            .await
            .with_context(what)?;
        // Connecting, TLS and authentication run in the crate's worker: wait for the server to accept
        // the stream, so that a refused certificate or a slot still held elsewhere is this call's error.
        client.wait_started().await.with_context(what)?;
        Ok(Stream { client })
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        let event = self.client.recv().await.context("replication stream")?;
        let Some(event) = event else { return Ok(None) };
        let message = match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                return Ok(Some(Event::KeepAlive { wal_end: Lsn(wal_end.as_u64()) }))
            }
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                Message::Begin { final_lsn: Lsn(final_lsn.as_u64()), commit_time: commit_time_micros, xid }
            }
            ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => Message::Commit {
                commit_lsn: Lsn(lsn.as_u64()),
                end_lsn: Lsn(end_lsn.as_u64()),
                commit_time: commit_time_micros,
            },
            ReplicationEvent::Message { transactional, prefix, content, .. } => {
                Message::Logical { transactional, prefix, content: content.to_vec() }
            }
            ReplicationEvent::XLogData { data, .. } => decoder::decode(&data)?,
            ReplicationEvent::StoppedAt { .. } => return Ok(None),
        };
        Ok(Some(Event::Message(message)))
    }

    /// Everything before `lsn` is handled: the slot may let it go.
    pub fn confirm(&self, lsn: Lsn) {
        self.client.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
    }

    /// Ends the replication connection (the slot becomes free to drop or to stream elsewhere).
    pub async fn stop(mut self) {
        if let Err(error) = self.client.shutdown().await {
            tracing::debug!(%error, "replication stream shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire_replication::SslMode as Crate;

    fn files(root: Option<&str>, identity: bool) -> TlsFiles {
        TlsFiles {
            roots: root.map(|r| Roots::File(PathBuf::from(r))),
            identity: identity.then(|| (PathBuf::from("/c.crt"), PathBuf::from("/c.key"))),
        }
    }

    #[test]
    fn the_urls_tls_settings_reach_the_replication_connection() {
        let plain = tls_config(SslMode::Disable, &files(None, false), "h").unwrap();
        assert_eq!(plain.mode, Crate::Disable);
        let prefer = tls_config(SslMode::Prefer, &files(None, false), "h").unwrap();
        assert_eq!((prefer.mode, prefer.ca_pem_path), (Crate::Prefer, None));
        let require = tls_config(SslMode::Require, &files(None, false), "h").unwrap();
        assert_eq!((require.mode, require.ca_pem_path), (Crate::Require, None));
        // A private CA: its file, and the chain checked.
        let ca = tls_config(SslMode::VerifyCa, &files(Some("/ca.pem"), false), "db").unwrap();
        assert_eq!((ca.mode, ca.ca_pem_path.as_deref()), (Crate::VerifyCa, Some(std::path::Path::new("/ca.pem"))));
        // As libpq, a root file with prefer or require checks the chain: never weaker than the URL asks.
        for mode in [SslMode::Prefer, SslMode::Require] {
            assert_eq!(tls_config(mode, &files(Some("/ca.pem"), false), "db").unwrap().mode, Crate::VerifyCa);
        }
        // verify-full checks the URL's host, an IP address included.
        let full = tls_config(SslMode::VerifyFull, &files(Some("/ca.pem"), true), "127.0.0.1").unwrap();
        assert_eq!(full.mode, Crate::VerifyFull);
        assert_eq!(full.sni_hostname.as_deref(), Some("127.0.0.1"));
        assert_eq!(full.client_cert_pem_path.as_deref(), Some(std::path::Path::new("/c.crt")));
        assert_eq!(full.client_key_pem_path.as_deref(), Some(std::path::Path::new("/c.key")));
        assert!(tls_config(SslMode::VerifyFull, &files(None, false), "h").is_err());
    }
}
