//! Chains in the kernel: reading which exist from `iptables-save`, and
//! deleting ours (one restore flushes, then deletes, so chains that jump to
//! each other go together).

use super::jumps;
use super::kernel::{Kernel, Table};
use super::names;
use crate::model::Family;
use anyhow::Result;

/// Chain names declared in an `iptables-save` dump (`:NAME POLICY [p:b]`).
pub fn declared_chains(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(declared_chain)
        .map(str::to_string)
        .collect()
}

/// The chain a dump line declares, if it is a declaration.
pub fn declared_chain(line: &str) -> Option<&str> {
    line.strip_prefix(':')?.split_whitespace().next()
}

/// Chain names declared in `iptables-save -t <table>`, read as a stream.
pub fn declared_chains_in(
    kernel: &mut dyn Kernel,
    family: Family,
    table: Table,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    kernel.save_each(family, table, &mut |l| {
        if let Some(c) = declared_chain(l).filter(|c| keep(c)) {
            out.push(c.to_string());
        }
    })?;
    Ok(out)
}

/// Flushes and deletes, in one restore, every chain of `family` that `ours`
/// claims (by table and name) and the kernel has.
pub fn delete_chains(
    kernel: &mut dyn Kernel,
    family: Family,
    ours: impl Fn(Table, &str) -> bool,
) -> Result<()> {
    let mut payload = String::new();
    for table in [Table::Filter, Table::Nat] {
        let chains = declared_chains_in(kernel, family, table, |c| ours(table, c))?;
        if chains.is_empty() {
            continue;
        }
        payload.push_str(&format!("*{}\n", table.name()));
        for c in &chains {
            payload.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            payload.push_str(&format!("-X {c}\n"));
        }
        payload.push_str("COMMIT\n");
    }
    if !payload.is_empty() {
        kernel.restore(family, &payload)?;
    }
    Ok(())
}

/// Removes every kube-proxy jump and chain of both modes from one family:
/// they share chain names and reference each other's (KUBE-MARK-MASQ,
/// KUBE-PROXY-FIREWALL), so they go together, as upstream's cleanup does.
pub fn remove_all(kernel: &mut dyn Kernel, family: Family) -> Result<()> {
    for j in jumps::ipvs_mode().iter().chain(&jumps::iptables_mode()) {
        kernel.delete_jump(family, j)?;
    }
    delete_chains(kernel, family, |table, c| {
        names::ipvs_mode_chain(table, c) || names::iptables_mode_chain(c)
    })
}

/// What nftables mode removes when it takes a node over from iptables or
/// ipvs mode: [`remove_all`] but for KUBE-FIREWALL and its jumps, which
/// kubelet writes too (it drops traffic from outside to 127.0.0.0/8, which
/// `route_localnet=1` would otherwise let in; kubelet does not put it back).
pub fn remove_for_takeover(kernel: &mut dyn Kernel, family: Family) -> Result<()> {
    let kubelets =
        |j: &jumps::Jump| j.args.last().map(String::as_str) == Some(names::KUBE_FIREWALL);
    for j in jumps::ipvs_mode().iter().chain(&jumps::iptables_mode()) {
        if !kubelets(j) {
            kernel.delete_jump(family, j)?;
        }
    }
    delete_chains(kernel, family, |table, c| {
        c != names::KUBE_FIREWALL
            && (names::ipvs_mode_chain(table, c) || names::iptables_mode_chain(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_declared_chains() {
        let save = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-ABC - [0:0]\n-A KUBE-SVC-ABC -j X\nCOMMIT\n";
        let got: Vec<&str> = save.lines().filter_map(declared_chain).collect();
        assert_eq!(got, vec!["PREROUTING", "KUBE-SVC-ABC"]);
    }

    #[test]
    fn a_takeover_keeps_kubelets_firewall_chain_and_its_jumps() {
        use crate::xtables::fake::FakeIptables;
        let k = FakeIptables::default();
        k.state().restores.push(
            "*filter\n:KUBE-FIREWALL - [0:0]\n:KUBE-FORWARD - [0:0]\n-A KUBE-FIREWALL -j DROP\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]\nCOMMIT\n".into(),
        );
        k.state().add_jumps(&jumps::iptables_mode());
        remove_for_takeover(&mut k.clone(), Family::V4).unwrap();
        let s = k.state();
        assert!(s.chains(Table::Filter).contains_key(names::KUBE_FIREWALL));
        assert!(!s.chains(Table::Filter).contains_key(names::KUBE_FORWARD));
        assert!(
            s.chains(Table::Nat).is_empty(),
            "{:?}",
            s.chains(Table::Nat)
        );
        for j in jumps::iptables_mode() {
            let kubelets = j.args.last().map(String::as_str) == Some(names::KUBE_FIREWALL);
            assert_eq!(s.has(&j), kubelets, "{}", j.insert_line());
        }
    }
}
