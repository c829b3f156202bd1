//! When to sync, and what (pure: every method takes `now`). Changes within
//! `--min-sync-period` of the last sync coalesce into one; a failed sync
//! makes the next one full and waits a backoff; the periodic check or a
//! full-resync period can ask for a full sync; a backend can ask to be
//! synced again later (real servers draining).

use crate::model::ServicePortKey;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

/// Backoff after `failures` consecutive failed syncs.
pub fn backoff(failures: u32, min_sync_period: Duration) -> Duration {
    let base = Duration::from_millis(500).max(min_sync_period);
    let exp = base.saturating_mul(1 << failures.min(6));
    exp.min(Duration::from_secs(30))
}

/// What the next sync does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub full: bool,
    /// Service ports changed since the last successful sync.
    pub changed: BTreeSet<ServicePortKey>,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    min_sync_period: Duration,
    /// Rewrite everything this often even if nothing seems changed.
    full_resync_period: Duration,
    /// Both kinds of objects listed: nothing is synced before.
    ready: bool,
    pending: BTreeSet<ServicePortKey>,
    need_full: bool,
    /// A scan found leftovers for the next sync to remove.
    cleanup_pending: bool,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
    /// No sync before this (backoff after a failure).
    not_before: Instant,
    failures: u32,
    /// A sync the backend asked for (see `Backend::follow_up`).
    wake_at: Option<Instant>,
}

impl Schedule {
    /// The first sync is full, as soon as the objects are listed.
    pub fn new(now: Instant, min_sync_period: Duration, full_resync_period: Duration) -> Self {
        Schedule {
            min_sync_period,
            full_resync_period,
            ready: false,
            pending: BTreeSet::new(),
            need_full: true,
            cleanup_pending: false,
            last_sync: None,
            last_full: None,
            not_before: now,
            failures: 0,
            wake_at: None,
        }
    }

    /// Both kinds of objects are listed.
    pub fn set_ready(&mut self) {
        self.ready = true;
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Whether a sync has been tried.
    pub fn started(&self) -> bool {
        self.last_sync.is_some()
    }

    /// Consecutive failed syncs.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Service ports that may differ from the kernel.
    pub fn changed(&mut self, keys: impl IntoIterator<Item = ServicePortKey>) {
        self.pending.extend(keys);
    }

    /// The next sync rewrites everything (e.g. the periodic check found
    /// damage, or the node's addresses changed).
    pub fn request_full(&mut self) {
        self.need_full = true;
    }

    /// The next sync has leftovers to remove.
    pub fn request_cleanup(&mut self) {
        self.cleanup_pending = true;
    }

    /// The periodic tick: a full sync once `full_resync_period` has passed
    /// since the last one.
    pub fn tick(&mut self, now: Instant) {
        if self
            .last_full
            .is_some_and(|t| now.duration_since(t) >= self.full_resync_period)
        {
            self.need_full = true;
        }
    }

    /// When the next sync is due, or `None` when there is nothing to do.
    pub fn next_sync(&self, now: Instant) -> Option<Instant> {
        let work = self.need_full || self.cleanup_pending || !self.pending.is_empty();
        if !self.ready || !(work || self.wake_at.is_some()) {
            return None;
        }
        let after_min = self
            .last_sync
            .map(|t| t + self.min_sync_period)
            .unwrap_or(now);
        let due = after_min.max(self.not_before);
        Some(match self.wake_at {
            Some(w) if !work => due.max(w),
            _ => due,
        })
    }

    /// What a sync starting now does.
    pub fn due(&self) -> Due {
        Due {
            full: self.need_full,
            changed: self.pending.clone(),
        }
    }

    /// The sync of `due` succeeded at `now`; `follow_up` is when the
    /// backend wants another one.
    pub fn succeeded(&mut self, now: Instant, due: &Due, follow_up: Option<Duration>) {
        self.last_sync = Some(now);
        self.failures = 0;
        // Changes that arrived during the sync stay pending.
        self.pending.retain(|k| !due.changed.contains(k));
        self.need_full = false;
        self.cleanup_pending = false;
        self.wake_at = follow_up.map(|d| now + d);
        if due.full {
            self.last_full = Some(now);
        }
    }

    /// The sync failed at `now`: the next one is full, after a backoff
    /// (returned).
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.last_sync = Some(now);
        self.failures += 1;
        self.need_full = true;
        self.wake_at = None;
        let wait = backoff(self.failures, self.min_sync_period);
        self.not_before = now + wait;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::service_port;
    use crate::model::{Protocol, ServicePortKey};

    fn key(i: u16) -> ServicePortKey {
        service_port(
            "ns",
            &format!("s{i}"),
            "",
            Protocol::Tcp,
            "10.96.0.1",
            80,
            vec![],
        )
        .key
    }

    const MIN: Duration = Duration::from_secs(1);
    const FULL: Duration = Duration::from_secs(3600);

    fn ready(now: Instant) -> Schedule {
        let mut s = Schedule::new(now, MIN, FULL);
        s.set_ready();
        s
    }

    #[test]
    fn backoff_grows_and_caps() {
        let m = Duration::from_secs(1);
        assert_eq!(backoff(1, m), Duration::from_secs(2));
        assert_eq!(backoff(2, m), Duration::from_secs(4));
        assert_eq!(backoff(20, m), Duration::from_secs(30));
        assert_eq!(backoff(1, Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn nothing_before_the_objects_are_listed_then_a_full_sync_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, MIN, FULL);
        s.changed([key(1)]);
        assert_eq!(s.next_sync(t0), None);
        s.set_ready();
        assert_eq!(s.next_sync(t0), Some(t0));
        assert!(s.due().full);
    }

    #[test]
    fn changes_within_min_sync_period_wait_for_it() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        let due = s.due();
        s.succeeded(t0, &due, None);
        assert_eq!(s.next_sync(t0), None, "nothing to do");
        let t1 = t0 + Duration::from_millis(100);
        s.changed([key(1)]);
        s.changed([key(2)]);
        assert_eq!(
            s.next_sync(t1),
            Some(t0 + MIN),
            "one sync, at the end of the window"
        );
        let due = s.due();
        assert!(!due.full);
        assert_eq!(due.changed.len(), 2);
        s.succeeded(t0 + MIN, &due, None);
        assert_eq!(s.next_sync(t0 + MIN), None);
        // Long after the window: at once.
        let t2 = t0 + Duration::from_secs(10);
        s.changed([key(3)]);
        assert!(s.next_sync(t2).unwrap() <= t2, "due already");
    }

    #[test]
    fn a_change_during_a_sync_stays_pending() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        s.changed([key(1)]);
        let due = s.due();
        s.changed([key(2)]);
        s.succeeded(t0, &due, None);
        assert_eq!(s.due().changed, [key(2)].into());
        assert!(s.next_sync(t0).is_some());
    }

    #[test]
    fn a_failed_sync_makes_the_next_full_after_a_backoff() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        let due = s.due();
        s.succeeded(t0, &due, None);
        s.changed([key(1)]);
        assert!(!s.due().full);
        let wait = s.failed(t0);
        assert_eq!(wait, Duration::from_secs(2));
        assert!(s.due().full, "after a failure the next sync is full");
        assert_eq!(s.next_sync(t0), Some(t0 + wait));
        let wait2 = s.failed(t0 + wait);
        assert_eq!(wait2, Duration::from_secs(4), "backoff grows");
        for _ in 0..10 {
            s.failed(t0);
        }
        assert_eq!(
            s.next_sync(t0),
            Some(t0 + Duration::from_secs(30)),
            "and caps"
        );
        let due = s.due();
        s.succeeded(t0 + Duration::from_secs(30), &due, None);
        assert_eq!(s.failures(), 0);
        assert!(!s.due().full);
    }

    #[test]
    fn full_resync_period_and_requests() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        let due = s.due();
        s.succeeded(t0, &due, None);
        s.tick(t0 + Duration::from_secs(60));
        assert_eq!(s.next_sync(t0 + Duration::from_secs(60)), None);
        s.tick(t0 + FULL);
        assert!(s.due().full);
        let due = s.due();
        s.succeeded(t0 + FULL, &due, None);
        s.request_full();
        assert!(s.due().full, "a verify failure asks for a full sync");
        let due = s.due();
        s.succeeded(t0 + FULL, &due, None);
        s.request_cleanup();
        assert!(s.next_sync(t0 + FULL + MIN).is_some());
    }

    #[test]
    fn a_follow_up_waits_unless_there_is_other_work() {
        let t0 = Instant::now();
        let mut s = ready(t0);
        let due = s.due();
        s.succeeded(t0, &due, Some(Duration::from_secs(2)));
        assert_eq!(s.next_sync(t0), Some(t0 + Duration::from_secs(2)));
        s.changed([key(1)]);
        assert_eq!(s.next_sync(t0), Some(t0 + MIN), "a change comes first");
    }
}
