//! The background cleaner of stale UDP conntrack entries: the sync loop
//! hands it work (filters after a sync, the startup reconcile) over a
//! channel and goes on; the cleaner merges whatever queued up meanwhile and
//! makes one pass: one dump per family, then one batch of deletes.
//! [`pass`] is the logic, over a [`Table`] (the kernel, or a fake in tests).

use super::cleanup::{Flush, Matcher};
use super::reconcile::Targets;
use super::socket::{CtSocket, Deleted};
use super::wire::Entry;
use crate::model::Family;
use anyhow::Result;
use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the cleaner is asked to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Work {
    /// Filters from service port changes ([`super::cleanup::flushes`]).
    pub flushes: BTreeSet<Flush>,
    /// The model's destinations, for the startup reconcile.
    pub reconcile: Option<Targets>,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.flushes.is_empty() && self.reconcile.is_none()
    }

    /// Folds later work in: the filters add up, the later model wins.
    pub fn merge(&mut self, later: Work) {
        self.flushes.extend(later.flushes);
        if later.reconcile.is_some() {
            self.reconcile = later.reconcile;
        }
    }

    /// The families to dump, in order.
    fn families(&self) -> Vec<Family> {
        let mut f: BTreeSet<Family> = self.flushes.iter().map(Flush::family).collect();
        if let Some(t) = &self.reconcile {
            f.extend(t.families());
        }
        f.into_iter().collect()
    }
}

/// The conntrack table as the cleaner uses it.
pub trait Table {
    /// Hands every UDP entry of `family` to `f`; returns how many.
    fn dump_udp(&mut self, family: Family, f: &mut dyn FnMut(Entry)) -> Result<usize>;
    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted>;
}

impl Table for CtSocket {
    fn dump_udp(&mut self, family: Family, f: &mut dyn FnMut(Entry)) -> Result<usize> {
        CtSocket::dump_udp(self, family, f)
    }

    fn delete(&mut self, entries: &[Entry]) -> Result<Deleted> {
        CtSocket::delete(self, entries)
    }
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub dumps: usize,
    /// UDP entries read.
    pub seen: usize,
    /// Entries a filter covered.
    pub flushed: usize,
    /// Entries the reconcile found stale (and no filter covered).
    pub stale: usize,
    pub deleted: Deleted,
}

/// One pass: per family, one dump; the entries any filter covers or the
/// reconcile finds stale are deleted in one batch.
pub fn pass(table: &mut dyn Table, work: &Work) -> Result<Report> {
    let matcher = Matcher::new(&work.flushes);
    let mut r = Report::default();
    for family in work.families() {
        let mut doomed = Vec::new();
        let (mut flushed, mut stale) = (0, 0);
        r.seen += table.dump_udp(family, &mut |e| {
            if matcher.covers(&e) {
                flushed += 1;
                doomed.push(e);
            } else if work.reconcile.as_ref().is_some_and(|t| t.is_stale(&e)) {
                stale += 1;
                doomed.push(e);
            }
        })?;
        r.dumps += 1;
        r.flushed += flushed;
        r.stale += stale;
        if !doomed.is_empty() {
            let d = table.delete(&doomed)?;
            r.deleted.deleted += d.deleted;
            r.deleted.gone += d.gone;
        }
    }
    Ok(r)
}

/// The sync loop's handle on the cleaner thread; dropping it ends the
/// thread once its pass is done.
pub struct Cleaner {
    tx: mpsc::Sender<Work>,
}

impl Cleaner {
    /// Starts the cleaner on its own thread, deleting over netlink.
    pub fn spawn() -> Cleaner {
        Self::spawn_with(|| CtSocket::open().map(|s| Box::new(s) as Box<dyn Table + Send>))
    }

    /// Same, with the table `open` gives (opened again after a failure).
    pub fn spawn_with(
        open: impl Fn() -> Result<Box<dyn Table + Send>> + Send + 'static,
    ) -> Cleaner {
        let (tx, rx) = mpsc::channel::<Work>();
        let spawned = std::thread::Builder::new()
            .name("conntrack".into())
            .spawn(move || run(rx, open));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the conntrack cleaner; stale UDP entries stay until they expire");
        }
        Cleaner { tx }
    }

    /// Queues `work`; never blocks.
    pub fn submit(&self, work: Work) {
        if !work.is_empty() {
            let _ = self.tx.send(work);
        }
    }
}

/// A failed pass is tried again this many times, after 0.5, 1, 2 and 4 s
/// (new work merged in), then given up: filters applied much later could
/// delete flows that are current by then.
const RETRIES: u32 = 4;

fn retry_delay(attempt: u32) -> Duration {
    // Shorter in the unit tests, which wait for every retry.
    let base = Duration::from_millis(if cfg!(test) { 20 } else { 500 });
    base * 2u32.pow(attempt.min(10))
}

fn run(rx: mpsc::Receiver<Work>, open: impl Fn() -> Result<Box<dyn Table + Send>>) {
    let mut table: Option<Box<dyn Table + Send>> = None;
    let mut warned = false;
    // Work whose pass failed, and how often it was retried.
    let mut failed: Option<(Work, u32)> = None;
    loop {
        let (mut work, attempt) = match failed.take() {
            None => match rx.recv() {
                Ok(w) => (w, 0),
                Err(_) => return,
            },
            Some((mut w, n)) => match rx.recv_timeout(retry_delay(n)) {
                Ok(more) => {
                    w.merge(more);
                    (w, n + 1)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => (w, n + 1),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        // Whatever queued up while the last pass ran goes in this one.
        let mut merged = 1;
        while let Ok(more) = rx.try_recv() {
            work.merge(more);
            merged += 1;
        }
        let started = Instant::now();
        let result = match table.take() {
            Some(t) => Ok(t),
            None => open(),
        }
        .and_then(|mut t| {
            let r = pass(t.as_mut(), &work);
            // A failed pass may leave answers unread: a new socket next time.
            if r.is_ok() {
                table = Some(t);
            }
            r
        });
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(r) => {
                warned = false;
                log_pass(&work, &r, merged, ms);
            }
            Err(e) => {
                let e = format!("{e:#}");
                let retry = attempt < RETRIES;
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, retry, "deleting stale UDP conntrack entries over netlink failed; they stay until they expire unless a retry succeeds");
                } else {
                    tracing::debug!(error = %e, retry, "deleting stale UDP conntrack entries failed again");
                }
                if retry {
                    failed = Some((work, attempt));
                }
            }
        }
    }
}

fn log_pass(work: &Work, r: &Report, merged: usize, ms: u64) {
    let reconcile = work.reconcile.is_some();
    macro_rules! pass_event {
        ($level:ident, $msg:expr) => {
            tracing::$level!(
                filters = work.flushes.len(),
                reconcile,
                merged,
                dumps = r.dumps,
                udp_entries = r.seen,
                flushed = r.flushed,
                stale = r.stale,
                deleted = r.deleted.deleted,
                already_gone = r.deleted.gone,
                ms,
                $msg
            )
        };
    }
    if reconcile {
        pass_event!(
            info,
            "UDP conntrack entries reconciled with the services at startup"
        );
    } else if r.deleted.deleted > 0 {
        pass_event!(info, "stale UDP conntrack entries deleted");
    } else {
        pass_event!(debug, "no stale UDP conntrack entries");
    }
}

#[cfg(test)]
mod tests;
