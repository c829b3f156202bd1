//! Conntrack, around the rules: the table's size and timeouts set at start
//! ([`limits`]), and stale UDP entries deleted after syncs ([`cleanup`]) and
//! at startup ([`reconcile`]); the netlink codec ([`wire`], pure) and socket
//! ([`socket`]) for them.

pub mod cleanup;
pub mod limits;
pub mod reconcile;
pub mod socket;
pub mod wire;
