//! Conntrack, around the rules: the table's size and timeouts set at start
//! ([`limits`]), and stale UDP entries deleted after syncs ([`cleanup`]).

pub mod cleanup;
pub mod limits;
