//! The proxy's own recent query latency, as a figure the process can read (the Prometheus histogram is
//! write-only from inside): the backfill holds off while this instance's p99 exceeds a configured limit
//! (issue #5, "a pause when ... the proxy's own p99 latency exceeds a limit").
//!
//! Recording is one relaxed atomic add into a fixed log-scale bucket, and only once a consumer switched
//! it on ([`RecentLatency::enable`]), so a proxy without such a limit pays a single relaxed load. The p99
//! is read over a sliding window: the difference between the live counts and a snapshot at least
//! `window` old, so a burst of slow queries stops holding the backfill once it ages out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Upper bounds of the buckets, in microseconds; the last bucket is open-ended. The p99 reported is the
/// bound of the bucket it falls in (a conservative figure, at most 2x the true value).
const BOUNDS_US: [u64; 20] = [
    50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800, 409_600, 819_200, 1_638_400,
    3_276_800, 6_553_600, 13_107_200, 26_214_400,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;

type Counts = [u64; BUCKETS];

/// Process-wide recent latency of completed client requests.
pub struct RecentLatency {
    enabled: AtomicBool,
    buckets: [AtomicU64; BUCKETS],
    /// The snapshot the window starts at, and the one that will replace it.
    window: Mutex<Window>,
}

struct Window {
    length: Duration,
    base: (Instant, Counts),
    next: (Instant, Counts),
}

static RECENT: OnceLock<RecentLatency> = OnceLock::new();

impl RecentLatency {
    /// The process's instance.
    pub fn global() -> &'static RecentLatency {
        RECENT.get_or_init(|| RecentLatency::new(Duration::from_secs(5)))
    }

    pub fn new(window: Duration) -> Self {
        let now = Instant::now();
        RecentLatency {
            enabled: AtomicBool::new(false),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            window: Mutex::new(Window { length: window, base: (now, [0; BUCKETS]), next: (now, [0; BUCKETS]) }),
        }
    }

    /// Starts recording (idempotent).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Records one request's latency; a no-op until enabled.
    #[inline]
    pub fn record(&self, latency: Duration) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The p99 of the requests completed within roughly the last one to two windows, or `None` when
    /// there were none (an idle proxy never holds a backfill).
    pub fn p99(&self) -> Option<Duration> {
        self.p99_at(Instant::now())
    }

    fn p99_at(&self, now: Instant) -> Option<Duration> {
        let live: Counts = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(window.next.0) >= window.length {
            window.base = std::mem::replace(&mut window.next, (now, live));
        }
        let recent: Counts = std::array::from_fn(|i| live[i].saturating_sub(window.base.1[i]));
        drop(window);
        quantile(&recent, 0.99)
    }
}

/// The upper bound of the bucket holding the `q` quantile of `counts`.
fn quantile(counts: &Counts, q: f64) -> Option<Duration> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let bound = BOUNDS_US.get(i).copied().unwrap_or(u64::MAX);
            return Some(Duration::from_micros(bound));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_recorded_until_enabled() {
        let recent = RecentLatency::new(Duration::from_secs(5));
        recent.record(Duration::from_millis(10));
        assert_eq!(recent.p99(), None);
        recent.enable();
        recent.record(Duration::from_millis(10));
        assert_eq!(recent.p99(), Some(Duration::from_micros(12_800)));
    }

    #[test]
    fn p99_is_the_bucket_of_the_slowest_percent() {
        let recent = RecentLatency::new(Duration::from_secs(5));
        recent.enable();
        for _ in 0..990 {
            recent.record(Duration::from_micros(90));
        }
        for _ in 0..10 {
            recent.record(Duration::from_millis(300));
        }
        assert_eq!(recent.p99(), Some(Duration::from_micros(100)));
        recent.record(Duration::from_millis(300));
        assert_eq!(recent.p99(), Some(Duration::from_micros(409_600)));
    }

    #[test]
    fn slow_requests_age_out_of_the_window() {
        let start = Instant::now();
        let recent = RecentLatency::new(Duration::from_secs(5));
        recent.enable();
        recent.record(Duration::from_secs(2));
        assert_eq!(recent.p99_at(start), Some(Duration::from_micros(3_276_800)));
        // One window later the snapshot taken at the start becomes the base: the slow request is still
        // counted; two windows later it is not.
        assert!(recent.p99_at(start + Duration::from_secs(6)).is_some());
        assert_eq!(recent.p99_at(start + Duration::from_secs(12)), None);
        recent.record(Duration::from_micros(40));
        assert_eq!(recent.p99_at(start + Duration::from_secs(13)), Some(Duration::from_micros(50)));
    }

    #[test]
    fn latencies_beyond_the_last_bound_land_in_the_open_bucket() {
        let recent = RecentLatency::new(Duration::from_secs(5));
        recent.enable();
        recent.record(Duration::from_secs(3600));
        assert_eq!(recent.p99(), Some(Duration::from_micros(u64::MAX)));
    }
}
