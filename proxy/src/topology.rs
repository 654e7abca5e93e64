//! Which of the upstream's hosts the data plane's sessions connect to, when the upstream URL names
//! several and asks for the primary (`target_session_attrs=read-write|primary`).
//!
//! Authentication is relayed from the client, so the proxy cannot do what libpq does (log in to a host,
//! find it read-only, try the next): by the time the session's server says what it is, the client has
//! authenticated against it. So the primary is found beforehand with the control plane's credentials
//! (`PgTarget::find_acceptable`: the hosts in the URL's order, `pg_is_in_recovery()` and
//! `transaction_read_only` on each) and remembered; sessions connect to it. It is looked for again when
//! a connect to it fails and when a session's server turns out to be in hot standby (its ParameterStatus
//! `in_hot_standby` at startup, see `session::backend`, which also ends that session with libpq's words,
//! 08001, rather than letting it run read-only); that probe tries the host just found unusable last.
//! One probe runs at a time; sessions arriving meanwhile wait for its answer, and a probe that found no
//! primary is reused for a moment so a failover's window does not turn into a storm of probes.
//!
//! With `target_session_attrs=any` (libpq's default) nothing is probed: sessions take the first host, in
//! order, that accepts the TCP connection.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pg_client::PgTarget;
use crate::session_attrs::{HostAddr, SessionAttrs};

/// How long a probe that found no acceptable host answers for the sessions that follow.
const FAILED_PROBE_REUSE: Duration = Duration::from_millis(500);

/// See the module docs.
#[derive(Debug)]
pub struct Topology {
    hosts: Vec<HostAddr>,
    attrs: SessionAttrs,
    /// The control plane's connection settings; the probe replaces their host by each of `hosts`.
    probe: PgTarget,
    known: Mutex<Known>,
    probing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Known {
    /// Index in `hosts` of the host last found acceptable, until a session finds otherwise.
    primary: Option<usize>,
    /// The last probe's failure, and when.
    failed: Option<(Instant, String)>,
    /// The host a session last found unusable: the next probe tries it last (a host gone without a word
    /// costs a whole connect timeout, and it is the one least likely to be the primary now).
    suspect: Option<usize>,
}

impl Topology {
    /// `probe` gives the credentials, database and TLS of the probes (a connect timeout of
    /// `connect_timeout` unless it has one); it is never connected to its own hosts.
    pub fn new(hosts: Vec<HostAddr>, attrs: SessionAttrs, mut probe: PgTarget, connect_timeout: Duration) -> Self {
        if probe.config().get_connect_timeout().is_none() {
            probe.config_mut().connect_timeout(connect_timeout);
        }
        Topology { hosts, attrs, probe, known: Mutex::default(), probing: tokio::sync::Mutex::new(()) }
    }

    pub fn hosts(&self) -> &[HostAddr] {
        &self.hosts
    }

    pub fn attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// Sessions need the primary found first: several hosts and a `target_session_attrs` other than any.
    /// (With one host there is nothing to choose; its server's ParameterStatus is still judged.)
    pub fn follows_primary(&self) -> bool {
        self.hosts.len() > 1 && self.attrs != SessionAttrs::Any
    }

    /// The host last found acceptable, if any is known now.
    pub fn known_primary(&self) -> Option<&HostAddr> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.primary.map(|i| &self.hosts[i])
    }

    /// The index of the host sessions go to: the known one, else a probe's answer. The error says what
    /// each host answered (libpq's words).
    pub async fn primary(&self) -> Result<usize, String> {
        if let Some(found) = self.remembered() {
            return found;
        }
        let _one_probe = self.probing.lock().await;
        if let Some(found) = self.remembered() {
            return found;
        }
        // The control plane's settings aimed at the data plane's hosts (its own URL may name others), in
        // the URL's order but for the suspect, last.
        let suspect = self.known.lock().unwrap_or_else(|e| e.into_inner()).suspect;
        let order = probe_order(self.hosts.len(), suspect);
        let hosts: Vec<HostAddr> = order.iter().map(|&i| self.hosts[i].clone()).collect();
        let found = match self.probe.find_acceptable(&hosts, self.attrs).await {
            Ok((position, _)) => Ok(order[position]),
            Err(error) => Err(format!("{error:#}")),
        };
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match &found {
            Ok(index) => {
                tracing::info!(
                    primary = %self.hosts[*index].describe(),
                    target_session_attrs = self.attrs.as_str(),
                    "upstream primary found"
                );
                metrics::counter!("dualwrite_upstream_primary_probes_total", "result" => "found").increment(1);
                known.primary = Some(*index);
                known.failed = None;
                known.suspect = None;
            }
            Err(reason) => {
                tracing::warn!(%reason, "no upstream host is acceptable for new sessions");
                metrics::counter!("dualwrite_upstream_primary_probes_total", "result" => "none").increment(1);
                known.failed = Some((Instant::now(), reason.clone()));
            }
        }
        found
    }

    /// A session could not connect to `host`, or found it in hot standby: the next session looks again.
    pub fn lost(&self, host: usize) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.primary == Some(host) {
            tracing::warn!(host = %self.hosts[host].describe(), "the upstream primary is no longer acceptable");
            known.primary = None;
            known.suspect = Some(host);
        }
    }

    fn remembered(&self) -> Option<Result<usize, String>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = known.primary {
            return Some(Ok(index));
        }
        match &known.failed {
            Some((at, reason)) if at.elapsed() < FAILED_PROBE_REUSE => Some(Err(reason.clone())),
            _ => None,
        }
    }
}

/// The hosts' indexes in the URL's order, `suspect` moved last.
fn probe_order(hosts: usize, suspect: Option<usize>) -> Vec<usize> {
    (0..hosts).filter(|&i| Some(i) != suspect).chain(suspect).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_just_found_unusable_is_probed_last() {
        assert_eq!(probe_order(3, None), [0, 1, 2]);
        assert_eq!(probe_order(3, Some(0)), [1, 2, 0]);
        assert_eq!(probe_order(3, Some(1)), [0, 2, 1]);
        assert_eq!(probe_order(1, Some(0)), [0]);
    }
}
