//! The sysctls IPVS mode needs (decided purely, written by a small applier).

use anyhow::{Context, Result};
use std::path::Path;

pub use crate::node::Sysctl;

/// The kernel release that fixed the one-second stall when a new connection
/// reuses a port of an IPVS connection still in TIME_WAIT; older kernels need
/// `conn_reuse_mode=0`.
pub const CONN_REUSE_FIXED: (u32, u32) = (5, 9);

/// Parses "6.1.0-56-amd64" into (6, 1).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// What IPVS mode sets on this node.
pub fn plan(kernel: Option<(u32, u32)>, strict_arp: bool) -> Vec<Sysctl> {
    let mut v = vec![
        Sysctl {
            key: "net/ipv4/vs/conntrack",
            value: "1",
            why: "IPVS connections must go through conntrack so iptables can masquerade them",
        },
        Sysctl {
            key: "net/ipv4/vs/expire_nodest_conn",
            value: "1",
            why: "drop connections to a deleted real server at once instead of black-holing them",
        },
        Sysctl {
            key: "net/ipv4/vs/expire_quiescent_template",
            value: "1",
            why: "session-affinity entries of a weight-0 real server expire so new clients move on",
        },
        Sysctl {
            key: "net/ipv4/ip_forward",
            value: "1",
            why: "pods and external clients are routed through the node",
        },
    ];
    if kernel.is_some_and(|k| k < CONN_REUSE_FIXED) {
        v.push(Sysctl {
            key: "net/ipv4/vs/conn_reuse_mode",
            value: "0",
            why: "kernels before 5.9 stall one second on port reuse with mode 1",
        });
    }
    if strict_arp {
        v.push(Sysctl {
            key: "net/ipv4/conf/all/arp_ignore",
            value: "1",
            why: "ipvs.strictARP: answer ARP only for addresses on the receiving interface (not kube-ipvs0)",
        });
        v.push(Sysctl {
            key: "net/ipv4/conf/all/arp_announce",
            value: "2",
            why: "ipvs.strictARP: never announce kube-ipvs0 addresses as ARP sources",
        });
    }
    v
}

/// Writes each sysctl under `root` (normally /proc/sys) whose value differs;
/// returns the ones changed as (key, old value).
pub fn apply(root: &Path, wanted: &[Sysctl]) -> Result<Vec<(String, String)>> {
    let mut changed = Vec::new();
    for s in wanted {
        let path = root.join(s.key);
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading sysctl {} (is the module loaded?)", s.key))?;
        let old = old.trim().to_string();
        if old != s.value {
            std::fs::write(&path, s.value)
                .with_context(|| format!("setting sysctl {}={}", s.key, s.value))?;
            changed.push((s.key.to_string(), old));
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_conn_reuse() {
        assert_eq!(kernel_version("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("4.19.0"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
        let has = |k: Option<(u32, u32)>| {
            plan(k, false)
                .iter()
                .any(|s| s.key == "net/ipv4/vs/conn_reuse_mode")
        };
        assert!(has(Some((4, 19))));
        assert!(has(Some((5, 8))));
        assert!(!has(Some((5, 9))));
        assert!(!has(Some((6, 1))));
        assert!(!has(None), "unknown kernel: leave the kernel default");
    }

    #[test]
    fn strict_arp_only_when_asked() {
        let keys = |strict| {
            plan(Some((6, 1)), strict)
                .into_iter()
                .map(|s| (s.key, s.value))
                .collect::<Vec<_>>()
        };
        assert!(!keys(false).iter().any(|(k, _)| k.contains("arp_")));
        let on = keys(true);
        assert!(on.contains(&("net/ipv4/conf/all/arp_ignore", "1")));
        assert!(on.contains(&("net/ipv4/conf/all/arp_announce", "2")));
        assert!(on.contains(&("net/ipv4/vs/conntrack", "1")));
    }

    #[test]
    fn apply_writes_only_differences() {
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in [
            ("net/ipv4/vs/conntrack", "0\n"),
            ("net/ipv4/ip_forward", "1\n"),
        ] {
            let p = dir.path().join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        let want: Vec<_> = plan(None, false)
            .into_iter()
            .filter(|s| s.key == "net/ipv4/vs/conntrack" || s.key == "net/ipv4/ip_forward")
            .collect();
        let changed = apply(dir.path(), &want).unwrap();
        assert_eq!(
            changed,
            vec![("net/ipv4/vs/conntrack".to_string(), "0".to_string())]
        );
        let now = std::fs::read_to_string(dir.path().join("net/ipv4/vs/conntrack")).unwrap();
        assert_eq!(now, "1");
        assert!(
            apply(dir.path(), &plan(None, true)).is_err(),
            "missing sysctl is an error"
        );
    }
}
