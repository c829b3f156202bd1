//! Proxy health as upstream reports it on `--healthz-bind-address` (10256):
//! `/livez` fails when a change has waited longer than the health timeout
//! (2 x `--sync-period`) without a successful sync; `/healthz` additionally
//! fails while this node is being deleted, so load balancers drain it.

pub mod node_ports;

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy)]
struct State {
    last_updated: Option<SystemTime>,
    /// Oldest change not yet in the kernel.
    oldest_pending: Option<SystemTime>,
    node_eligible: bool,
}

/// Shared between the sync loop (writer) and the HTTP servers (readers).
#[derive(Debug)]
pub struct Health {
    timeout: Duration,
    state: Mutex<State>,
}

/// What `/healthz` or `/livez` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub healthy: bool,
    pub body: String,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Health {
    pub fn new(timeout: Duration) -> Self {
        Health {
            timeout,
            state: Mutex::new(State {
                last_updated: None,
                oldest_pending: None,
                node_eligible: true,
            }),
        }
    }

    /// A change was queued for the kernel.
    pub fn queued(&self, now: SystemTime) {
        let mut s = self.state.lock().unwrap();
        s.oldest_pending.get_or_insert(now);
    }

    /// A sync succeeded: everything queued so far is in the kernel.
    pub fn updated(&self, now: SystemTime) {
        let mut s = self.state.lock().unwrap();
        s.last_updated = Some(now);
        s.oldest_pending = None;
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.state.lock().unwrap().node_eligible = eligible;
    }

    pub fn is_healthy(&self, now: SystemTime) -> bool {
        let s = *self.state.lock().unwrap();
        match s.oldest_pending {
            None => true,
            Some(t) => now.duration_since(t).unwrap_or_default() < self.timeout,
        }
    }

    /// `/livez`: is the proxy keeping the kernel up to date.
    pub fn livez(&self, now: SystemTime) -> Report {
        let s = *self.state.lock().unwrap();
        let healthy = self.is_healthy(now);
        let body = format!(
            "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\"}}",
            s.last_updated.map(rfc3339).unwrap_or_default(),
            rfc3339(now)
        );
        Report { healthy, body }
    }

    /// `/healthz`: live, and this node is not being deleted.
    pub fn healthz(&self, now: SystemTime) -> Report {
        let s = *self.state.lock().unwrap();
        let healthy = self.is_healthy(now) && s.node_eligible;
        let body = format!(
            "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\", \"nodeEligible\": {}}}",
            s.last_updated.map(rfc3339).unwrap_or_default(),
            rfc3339(now),
            s.node_eligible
        );
        Report { healthy, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_only_when_a_change_waits_too_long() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = Health::new(Duration::from_secs(60));
        assert!(h.is_healthy(t0), "nothing pending");
        h.queued(t0);
        h.queued(t0 + Duration::from_secs(30));
        assert!(h.is_healthy(t0 + Duration::from_secs(59)));
        assert!(
            !h.is_healthy(t0 + Duration::from_secs(61)),
            "oldest change counts"
        );
        h.updated(t0 + Duration::from_secs(62));
        assert!(
            h.is_healthy(t0 + Duration::from_secs(1000)),
            "idle after a sync is healthy"
        );
        let r = h.livez(t0 + Duration::from_secs(63));
        assert!(r.healthy);
        assert!(
            r.body.contains("\"lastUpdated\": \"2023-11-14T22:14:22Z\""),
            "{}",
            r.body
        );
    }

    #[test]
    fn healthz_reports_node_eligibility() {
        let now = SystemTime::now();
        let h = Health::new(Duration::from_secs(60));
        assert!(h.healthz(now).healthy);
        h.set_node_eligible(false);
        let r = h.healthz(now);
        assert!(
            !r.healthy && r.body.contains("\"nodeEligible\": false"),
            "{}",
            r.body
        );
        assert!(h.livez(now).healthy, "livez ignores node deletion");
    }
}
