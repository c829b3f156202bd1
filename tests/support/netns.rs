//! A throwaway network namespace, deleted when dropped.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub struct Netns(String);

impl Netns {
    pub fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("kprs-t-{}-{}", std::process::id(), N.fetch_add(1, Relaxed));
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name} failed");
        Netns(name)
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}
