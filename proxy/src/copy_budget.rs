//! The memory every session together may keep for COPYs dual-written with COPYs alone
//! (`limits.copy_buffer_total_mb`). Each such COPY keeps its rows until the second COPY has them
//! (`protocol::requests::tee`), up to `limits.copy_buffer_mb` of one COPY; without a bound over all of
//! them, many large COPYs at once would hold that many times over, and the proxy's memory with them. A
//! COPY whose next rows do not fit in what is left gives way to the staging path, as one past its own
//! limit does: that path streams, keeping nothing.
//!
//! Owns the count of bytes kept and the gauge that shows it. Pure bookkeeping: atomics, no I/O.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Gauge: bytes of COPY data the proxy keeps now for dual writes of COPYs alone, over all sessions.
pub const COPY_BUFFER_BYTES: &str = "dualwrite_copy_buffer_bytes";

/// The bytes kept over all sessions, and the most they may be.
#[derive(Debug)]
pub struct CopyBudget {
    used: AtomicUsize,
    limit: AtomicUsize,
}

impl CopyBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(CopyBudget { used: AtomicUsize::new(0), limit: AtomicUsize::new(limit) })
    }

    /// A new limit (a reload): what is kept already stays kept; only what comes next must fit.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes kept now, over all sessions.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation against this budget.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation { budget: Arc::clone(self), bytes: 0, gauge: None }
    }
}

/// The bytes one COPY keeps, given back to the budget when it is dropped (the COPY ended, gave way to the
/// staging path, or its session ended).
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<CopyBudget>,
    bytes: usize,
    /// The gauge's handle, looked up at the first growth: a COPY grows its reservation per CopyData
    /// message, which psql sends per row, and the macro's lookup hashes the name each time.
    gauge: Option<metrics::Gauge>,
}

impl Reservation {
    /// Takes `more` bytes from the budget; false, taking nothing, when they do not fit in what is left.
    pub fn grow(&mut self, more: usize) -> bool {
        let limit = self.budget.limit.load(Ordering::Relaxed);
        let fits = |used: usize| used.checked_add(more).filter(|&total| total <= limit);
        if self.budget.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).is_err() {
            return false;
        }
        self.bytes += more;
        self.gauge.get_or_insert_with(|| metrics::gauge!(COPY_BUFFER_BYTES)).increment(more as f64);
        true
    }

    /// Bytes this reservation holds.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
            if let Some(gauge) = &self.gauge {
                gauge.decrement(self.bytes as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_give_their_bytes_back_when_dropped() {
        let budget = CopyBudget::new(100);
        let (mut a, mut b) = (budget.reservation(), budget.reservation());
        assert!(a.grow(60));
        assert!(!b.grow(41), "60 + 41 passes 100");
        assert_eq!((b.bytes(), budget.used()), (0, 60), "a refused growth takes nothing");
        assert!(b.grow(40));
        assert!(!a.grow(1));
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow(60), "a's bytes are free again");
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_lower_limit_keeps_what_is_kept_and_refuses_what_comes_next() {
        let budget = CopyBudget::new(100);
        let mut a = budget.reservation();
        assert!(a.grow(80));
        budget.set_limit(50);
        assert_eq!(budget.used(), 80);
        assert!(!a.grow(1));
        drop(a);
        assert!(budget.reservation().grow(50));
    }

    #[test]
    fn a_growth_that_would_overflow_is_refused() {
        let budget = CopyBudget::new(usize::MAX);
        let mut a = budget.reservation();
        assert!(a.grow(usize::MAX - 1));
        assert!(!budget.reservation().grow(2));
    }

    #[test]
    fn reservations_on_many_threads_never_pass_the_limit_together() {
        let budget = CopyBudget::new(1000);
        let taken: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let budget = Arc::clone(&budget);
                    scope.spawn(move || {
                        let mut mine = budget.reservation();
                        while mine.grow(7) {}
                        let bytes = mine.bytes();
                        std::mem::forget(mine);
                        bytes
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert!((994..=1000).contains(&taken), "taken {taken}: each thread stops only once 7 more do not fit");
        assert_eq!(budget.used(), taken);
    }
}
