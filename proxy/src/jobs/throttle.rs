//! Pure throttling decisions of the backfill: how long to wait to honour a rows-per-second limit, and
//! whether the upstream's replication lag or the proxy's latency signal says to hold off. No I/O here, so
//! the rules are unit-tested without a clock.

use std::sync::Arc;
use std::time::Duration;

/// A live latency figure supplied by the embedding process (e.g. the proxy's p99 query latency).
pub type LatencySignal = Arc<dyn Fn() -> Option<Duration> + Send + Sync>;

/// The configured limits.
#[derive(Clone, Default)]
pub struct Limits {
    /// Rows per second; `None` = unthrottled.
    pub rate: Option<u32>,
    /// Pause while upstream replication replay lag exceeds this.
    pub max_replication_lag: Option<Duration>,
    /// Pause while the latency signal exceeds this.
    pub max_latency: Option<Duration>,
    pub latency_signal: Option<LatencySignal>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("rate", &self.rate)
            .field("max_replication_lag", &self.max_replication_lag)
            .field("max_latency", &self.max_latency)
            .field("latency_signal", &self.latency_signal.is_some())
            .finish()
    }
}

/// Why the backfill is holding off before its next batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    ReplicationLag(Duration),
    Latency(Duration),
}

/// The batch size to use: never more rows than one second's worth, so a rate limit is honoured smoothly.
pub fn effective_batch(batch: u32, rate: Option<u32>) -> u32 {
    match rate {
        Some(rate) => batch.min(rate.max(1)).max(1),
        None => batch.max(1),
    }
}

/// How long to sleep so that `rows` copied over `elapsed` stays within `rate` rows per second.
pub fn rate_delay(rows: u64, elapsed: Duration, rate: Option<u32>) -> Duration {
    match rate {
        Some(rate) if rate > 0 => {
            let due = Duration::from_secs_f64(rows as f64 / f64::from(rate));
            due.saturating_sub(elapsed)
        }
        _ => Duration::ZERO,
    }
}

/// Whether to hold off, given the measured replication lag and latency.
pub fn hold(limits: &Limits, replication_lag: Option<Duration>, latency: Option<Duration>) -> Option<Hold> {
    if let (Some(max), Some(lag)) = (limits.max_replication_lag, replication_lag) {
        if lag > max {
            return Some(Hold::ReplicationLag(lag));
        }
    }
    if let (Some(max), Some(latency)) = (limits.max_latency, latency) {
        if latency > max {
            return Some(Hold::Latency(latency));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_delay_spreads_rows_over_time() {
        assert_eq!(rate_delay(1000, Duration::from_millis(250), Some(1000)), Duration::from_millis(750));
        assert_eq!(rate_delay(1000, Duration::from_secs(2), Some(1000)), Duration::ZERO);
        assert_eq!(rate_delay(1000, Duration::ZERO, None), Duration::ZERO);
    }

    #[test]
    fn batch_never_exceeds_one_second_of_rate() {
        assert_eq!(effective_batch(10_000, Some(500)), 500);
        assert_eq!(effective_batch(100, Some(500)), 100);
        assert_eq!(effective_batch(10_000, None), 10_000);
    }

    #[test]
    fn holds_on_lag_or_latency_above_limit() {
        let limits = Limits {
            max_replication_lag: Some(Duration::from_secs(5)),
            max_latency: Some(Duration::from_millis(50)),
            ..Limits::default()
        };
        assert_eq!(hold(&limits, Some(Duration::from_secs(1)), Some(Duration::from_millis(10))), None);
        assert_eq!(
            hold(&limits, Some(Duration::from_secs(6)), None),
            Some(Hold::ReplicationLag(Duration::from_secs(6)))
        );
        assert_eq!(
            hold(&limits, None, Some(Duration::from_millis(80))),
            Some(Hold::Latency(Duration::from_millis(80)))
        );
        assert_eq!(hold(&Limits::default(), Some(Duration::from_secs(600)), None), None);
    }
}
