//! The jumps from the built-in chains (PREROUTING, INPUT, ...) into ours, of
//! both modes, as upstream installs them (pure, apart from [`jumps_intact`]
//! which asks the kernel). A mode's cleanup removes every mode's jumps: a
//! node may switch modes.

use super::kernel::{Kernel, Table};
use super::names::*;
use crate::model::Family;
use anyhow::Result;

/// A jump from a built-in chain that must exist (ensured with `-C`/`-I`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub table: Table,
    pub from: &'static str,
    /// Arguments after the chain name, e.g. `-m comment --comment ... -j KUBE-SERVICES`.
    pub args: Vec<String>,
}

impl Jump {
    /// A jump to `to`, with `-m conntrack --ctstate NEW` first when `ct_new`
    /// and a comment unless `comment` is empty.
    fn new(table: Table, from: &'static str, to: &str, comment: &str, ct_new: bool) -> Jump {
        let mut args: Vec<String> = Vec::new();
        if ct_new {
            args.extend(["-m", "conntrack", "--ctstate", "NEW"].map(String::from));
        }
        if !comment.is_empty() {
            args.extend(["-m", "comment", "--comment", comment].map(String::from));
        }
        args.extend(["-j", to].map(String::from));
        Jump { table, from, args }
    }

    /// `-I CHAIN args...` as iptables-restore reads it (arguments with
    /// spaces quoted; they come from the fixed lists below, never from
    /// objects).
    pub fn insert_line(&self) -> String {
        let mut line = format!("-I {}", self.from);
        for a in &self.args {
            line.push(' ');
            if a.contains(' ') {
                line.push('"');
                line.push_str(a);
                line.push('"');
            } else {
                line.push_str(a);
            }
        }
        line
    }
}

/// The jumps of iptables mode.
pub fn iptables_mode() -> Vec<Jump> {
    use Table::{Filter, Nat};
    let ext = "kubernetes externally-visible service portals";
    let lb = "kubernetes load balancer firewall";
    [
        (Filter, "INPUT", KUBE_EXTERNAL_SERVICES, ext, true),
        (Filter, "FORWARD", KUBE_EXTERNAL_SERVICES, ext, true),
        (
            Filter,
            "INPUT",
            KUBE_NODEPORTS,
            "kubernetes health check service ports",
            false,
        ),
        (
            Filter,
            "FORWARD",
            KUBE_SERVICES,
            "kubernetes service portals",
            true,
        ),
        (
            Filter,
            "OUTPUT",
            KUBE_SERVICES,
            "kubernetes service portals",
            true,
        ),
        (
            Filter,
            "FORWARD",
            KUBE_FORWARD,
            "kubernetes forwarding rules",
            false,
        ),
        (Filter, "INPUT", KUBE_PROXY_FIREWALL, lb, true),
        (Filter, "OUTPUT", KUBE_PROXY_FIREWALL, lb, true),
        (Filter, "FORWARD", KUBE_PROXY_FIREWALL, lb, true),
        // Upstream's KUBE-FIREWALL jumps (kubelet's, once) carry no comment;
        // matching them exactly keeps a takeover from adding duplicates.
        (Filter, "INPUT", KUBE_FIREWALL, "", false),
        (Filter, "OUTPUT", KUBE_FIREWALL, "", false),
        (
            Nat,
            "OUTPUT",
            KUBE_SERVICES,
            "kubernetes service portals",
            false,
        ),
        (
            Nat,
            "PREROUTING",
            KUBE_SERVICES,
            "kubernetes service portals",
            false,
        ),
        (
            Nat,
            "POSTROUTING",
            KUBE_POSTROUTING,
            "kubernetes postrouting rules",
            false,
        ),
    ]
    .into_iter()
    .map(|(table, from, to, comment, ct_new)| Jump::new(table, from, to, comment, ct_new))
    .collect()
}

/// The jumps of ipvs mode, in the order upstream inserts them (each at the
/// top, so later ones of a chain end up first).
pub fn ipvs_mode() -> Vec<Jump> {
    use Table::{Filter, Nat};
    let access = "kubernetes ipvs access filter";
    [
        (Nat, "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
        (
            Nat,
            "PREROUTING",
            KUBE_SERVICES,
            "kubernetes service portals",
        ),
        (
            Nat,
            "POSTROUTING",
            KUBE_POSTROUTING,
            "kubernetes postrouting rules",
        ),
        (
            Filter,
            "FORWARD",
            KUBE_FORWARD,
            "kubernetes forwarding rules",
        ),
        (
            Filter,
            "INPUT",
            KUBE_NODE_PORT,
            "kubernetes health check rules",
        ),
        (
            Filter,
            "INPUT",
            KUBE_PROXY_FIREWALL,
            "kube-proxy firewall rules",
        ),
        (
            Filter,
            "FORWARD",
            KUBE_PROXY_FIREWALL,
            "kube-proxy firewall rules",
        ),
        (Filter, "INPUT", KUBE_IPVS_FILTER, access),
        (Filter, "OUTPUT", KUBE_IPVS_OUT_FILTER, access),
    ]
    .into_iter()
    .map(|(table, from, to, comment)| Jump::new(table, from, to, comment, false))
    .collect()
}

/// Whether every jump of `jumps` is in place (`-C`; nothing is written).
/// A missing one is logged; the caller asks for a full sync, which puts it
/// back. Only the sync loop writes jumps, so a check running beside a sync
/// can never insert one a second time.
pub fn jumps_intact(kernel: &mut dyn Kernel, family: Family, jumps: &[Jump]) -> Result<bool> {
    let mut intact = true;
    for j in jumps {
        if !kernel.has_jump(family, j)? {
            tracing::warn!(
                from = j.from,
                table = j.table.name(),
                ?family,
                "a kube-proxy jump rule is missing; a full sync puts it back"
            );
            intact = false;
        }
    }
    Ok(intact)
}

/// After a failed sync: puts back, one `-I` each, the jumps that went
/// missing (the chains written before are still there, so traffic reaches
/// them again while the sync retries); a jump whose chain is gone waits
/// for a sync that succeeds.
pub fn put_back(kernel: &mut dyn Kernel, family: Family, jumps: &[Jump]) {
    for j in jumps {
        if let Err(e) = kernel.ensure_jump(family, j) {
            tracing::debug!(error = %format!("{e:#}"), from = j.from, "jump not put back yet");
        }
    }
}

/// The jumps as `render` prints them, one `iptables -I` line each.
pub fn describe(tool: &str, jumps: &[Jump]) -> String {
    let mut out = format!("# jumps ensured in built-in chains ({tool} -t TABLE -I CHAIN ...):\n");
    for j in jumps {
        out.push_str(&format!("#   -t {} {}\n", j.table.name(), j.insert_line()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipvs_jumps_match_upstream_order() {
        let j = ipvs_mode();
        assert_eq!(j.len(), 9);
        assert_eq!(j[0].from, "OUTPUT");
        assert_eq!(j[8].args.last().unwrap(), KUBE_IPVS_OUT_FILTER);
    }

    #[test]
    fn iptables_jumps_carry_upstream_matches() {
        let j = iptables_mode();
        assert_eq!(j.len(), 14);
        assert_eq!(
            j[0].insert_line(),
            "-I INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"
        );
        assert_eq!(j[9].insert_line(), "-I INPUT -j KUBE-FIREWALL");
    }
}
