//! Feeds planned payloads to `iptables-restore` as the engine plans them:
//! the start of a large payload while the rest is still being rendered,
//! each payload's end once it is complete. After a failure the remaining
//! payloads of the sync are only forgotten (the engine then rewrites
//! everything on the next sync).

use super::payload::{Payload, PayloadSink};
use super::rule_counts;
use crate::backend::SyncStats;
use crate::model::Family;
use crate::xtables::kernel::{Kernel, RestoreInput};

/// A payload's start, on its way to the kernel.
enum Started {
    None,
    /// A restore reading it.
    Input(Box<dyn RestoreInput>),
    /// Collected, for a kernel that takes payloads whole.
    Collected(String),
}

pub struct RestoreStream<'a> {
    pub kernel: &'a mut dyn Kernel,
    pub family: Family,
    pub written: &'a rule_counts::Shared,
    pub stats: &'a mut SyncStats,
    /// The first failure of this sync.
    pub failure: Option<anyhow::Error>,
    started: Started,
}

impl<'a> RestoreStream<'a> {
    pub fn new(
        kernel: &'a mut dyn Kernel,
        family: Family,
        written: &'a rule_counts::Shared,
        stats: &'a mut SyncStats,
    ) -> Self {
        RestoreStream {
            kernel,
            family,
            written,
            stats,
            failure: None,
            started: Started::None,
        }
    }

    fn restore(&mut self, p: &Payload) -> anyhow::Result<()> {
        match std::mem::replace(&mut self.started, Started::None) {
            Started::None => self.kernel.restore(self.family, &p.text),
            Started::Input(input) => input.finish(&p.text),
            Started::Collected(mut text) => {
                text.push_str(&p.text);
                self.kernel.restore(self.family, &text)
            }
        }
    }
}

impl PayloadSink for RestoreStream<'_> {
    fn streams(&self) -> bool {
        true
    }

    fn stream(&mut self, text: &str) {
        if self.failure.is_some() {
            return;
        }
        if let Started::None = self.started {
            self.started = match self.kernel.restore_begin(self.family) {
                Ok(Some(input)) => Started::Input(input),
                Ok(None) => Started::Collected(String::new()),
                Err(e) => {
                    self.failure = Some(e);
                    return;
                }
            };
        }
        match &mut self.started {
            Started::Input(input) => input.write(text),
            Started::Collected(collected) => collected.push_str(text),
            Started::None => unreachable!("started above"),
        }
    }

    fn done(&mut self, p: &Payload) -> Option<bool> {
        let family = self.family;
        if self.failure.is_some() {
            // A started restore gets its input closed before COMMIT:
            // nothing of it reaches the kernel (its error is expected).
            if let Started::Input(input) = std::mem::replace(&mut self.started, Started::None) {
                let _ = input.finish("");
            }
            self.written.lock().unwrap().forget(family, p);
            return Some(false);
        }
        self.written.lock().unwrap().begin(family, p);
        match self.restore(p) {
            Ok(()) => {
                self.written.lock().unwrap().commit(family, p);
                self.stats.calls += 1;
                self.stats.lines += p.lines;
                self.stats.written += p.writes.len();
                self.stats.deleted += p.deletes.len();
                Some(true)
            }
            Err(e) => {
                self.written.lock().unwrap().forget(family, p);
                self.failure = Some(e);
                Some(false)
            }
        }
    }
}
