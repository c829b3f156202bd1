//! Conntrack, around the rules: the table's size and timeouts set at start
//! ([`limits`]), and stale UDP entries deleted after syncs: which ones
//! ([`cleanup`] for changes, [`reconcile`] at startup; pure), the netlink
//! codec ([`wire`], pure) and socket ([`socket`]), and the background
//! cleaner that the sync loop hands the work to ([`worker`]).

pub mod cleanup;
pub mod limits;
pub mod reconcile;
pub mod socket;
pub mod wire;
pub mod worker;
