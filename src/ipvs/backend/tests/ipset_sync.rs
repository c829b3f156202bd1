//! How the backend writes ipset entries: `ipset restore` on full syncs, one
//! netlink batch on incremental ones, restore again when netlink cannot.

use super::*;
use crate::ipvs::ipset::socket::ChangeError;
use crate::ipvs::ipset::wire::EntryOp;

/// `ipset` as the backend sees it: restore text and netlink entry changes
/// applied to the world's sets.
pub(super) struct FakeIpset(pub(super) W);
impl IpsetKernel for FakeIpset {
    fn restore(&mut self, payload: &str) -> Result<()> {
        let mut w = self.0.lock().unwrap();
        w.ipset_payloads.push(payload.to_string());
        for l in payload.lines() {
            let p: Vec<&str> = l.split(' ').collect();
            match p[0] {
                "create" => {
                    w.sets.entry(p[1].to_string()).or_default();
                }
                "add" => {
                    w.sets.get_mut(p[1]).unwrap().insert(p[2].to_string());
                }
                "del" => {
                    assert!(
                        w.sets.get_mut(p[1]).unwrap().remove(p[2]),
                        "del of a missing entry: {l}"
                    );
                }
                "destroy" => {
                    w.sets.remove(p[1]);
                }
                other => panic!("unexpected ipset command {other}"),
            }
        }
        Ok(())
    }
    fn save(&mut self) -> Result<String> {
        let w = self.0.lock().unwrap();
        let mut out = String::new();
        for (n, es) in &w.sets {
            out.push_str(&format!("create {n} hash:ip,port\n"));
            for e in es {
                out.push_str(&format!("add {n} {e}\n"));
            }
        }
        Ok(out)
    }
    fn names(&mut self) -> Result<Vec<String>> {
        Ok(self.0.lock().unwrap().sets.keys().cloned().collect())
    }
    fn change(&mut self, ops: &[EntryOp]) -> std::result::Result<(), ChangeError> {
        let mut w = self.0.lock().unwrap();
        if let Some(fallback) = w.nl_fail {
            let msg = "fake netlink failure".into();
            return Err(ChangeError { msg, fallback });
        }
        w.ipset_changes.push(ops.iter().map(|o| o.line()).collect());
        for o in ops {
            crate::ipvs::ipset::wire::encode(o, 1).expect("every entry encodes");
            // As the kernel: ENOENT for a missing set (earlier ops stay).
            let Some(set) = w.sets.get_mut(&o.set) else {
                let msg = format!("no set {}", o.set);
                return Err(ChangeError {
                    msg,
                    fallback: true,
                });
            };
            if o.add {
                set.insert(o.entry.clone());
            } else {
                assert!(set.remove(&o.entry), "del of a missing entry: {o:?}");
            }
        }
        Ok(())
    }
}

fn local_web(eps: &[&str]) -> ServicePort {
    let mut p = web(&[]);
    p.endpoints = eps
        .iter()
        .map(|ip| {
            let mut e = endpoint(ip, 8080);
            e.is_local = true;
            e
        })
        .collect();
    p
}

fn only(p: &ServicePort) -> Ports {
    ports(std::slice::from_ref(p))
}

fn synced(w: &W, dir: &std::path::Path, p: &ServicePort) -> IpvsBackend {
    let mut b = backend(w, dir);
    b.sync(&only(p), &BTreeSet::new(), true).unwrap();
    b
}

#[test]
fn full_syncs_restore_incremental_ones_send_entries_over_netlink() {
    let w = W::default();
    let dir = sysctl_dir();
    let p = local_web(&["10.244.1.10"]);
    let mut b = synced(&w, dir.path(), &p);
    {
        let w = w.lock().unwrap();
        assert_eq!(w.ipset_payloads.len(), 1);
        assert!(w.ipset_payloads[0].contains("create KUBE-LOOP-BACK hash:ip,port,ip"));
        assert!(w.ipset_changes.is_empty(), "a full sync restores");
    }
    // One endpoint more, then one less: only its loop-back entry changes.
    let p2 = local_web(&["10.244.1.10", "10.244.1.11"]);
    b.sync(&only(&p2), &[p2.key.clone()].into(), false).unwrap();
    b.sync(&only(&p), &[p.key.clone()].into(), false).unwrap();
    let w = w.lock().unwrap();
    assert_eq!(w.ipset_payloads.len(), 1, "no ipset process");
    assert_eq!(
        w.ipset_changes,
        vec![
            vec!["add KUBE-LOOP-BACK 10.244.1.11,tcp:8080,10.244.1.11".to_string()],
            vec!["del KUBE-LOOP-BACK 10.244.1.11,tcp:8080,10.244.1.11".to_string()],
        ]
    );
    assert_eq!(
        w.sets["KUBE-LOOP-BACK"],
        ["10.244.1.10,tcp:8080,10.244.1.10".to_string()].into()
    );
}

#[test]
fn missing_sets_fall_back_to_restore_which_creates_them() {
    let w = W::default();
    let dir = sysctl_dir();
    let p = local_web(&["10.244.1.10"]);
    let mut b = synced(&w, dir.path(), &p);
    // Someone destroys a set between syncs.
    w.lock().unwrap().sets.remove("KUBE-LOOP-BACK");
    let p2 = local_web(&["10.244.1.10", "10.244.1.11"]);
    b.sync(&only(&p2), &[p2.key.clone()].into(), false).unwrap();
    assert!(b.ipset_fallback_warned);
    {
        let w = w.lock().unwrap();
        assert_eq!(w.ipset_payloads.len(), 2, "restore after the failed batch");
        let last = w.ipset_payloads.last().unwrap();
        assert!(last.contains("create KUBE-LOOP-BACK hash:ip,port,ip"));
        let add = "add KUBE-LOOP-BACK 10.244.1.11,tcp:8080,10.244.1.11";
        assert!(last.lines().any(|l| l == add), "{last}");
        assert!(w.sets["KUBE-LOOP-BACK"].contains("10.244.1.11,tcp:8080,10.244.1.11"));
        // What the destroyed set held before is written back too.
        assert!(
            w.sets["KUBE-LOOP-BACK"].contains("10.244.1.10,tcp:8080,10.244.1.10"),
            "{last}"
        );
    }
    // The set is back: the next change goes over netlink again.
    let p3 = local_web(&["10.244.1.10", "10.244.1.11", "10.244.1.12"]);
    b.sync(&only(&p3), &[p3.key.clone()].into(), false).unwrap();
    let w = w.lock().unwrap();
    assert_eq!(w.ipset_payloads.len(), 2);
    assert_eq!(
        w.ipset_changes.last().unwrap(),
        &vec!["add KUBE-LOOP-BACK 10.244.1.12,tcp:8080,10.244.1.12".to_string()]
    );
}

#[test]
fn netlink_unusable_falls_back_but_a_refusal_fails_the_sync() {
    let w = W::default();
    let dir = sysctl_dir();
    let p = local_web(&["10.244.1.10"]);
    let mut b = synced(&w, dir.path(), &p);
    w.lock().unwrap().nl_fail = Some(true);
    let p2 = local_web(&["10.244.1.10", "10.244.1.11"]);
    b.sync(&only(&p2), &[p2.key.clone()].into(), false).unwrap();
    assert_eq!(w.lock().unwrap().ipset_payloads.len(), 2);
    assert!(w.lock().unwrap().sets["KUBE-LOOP-BACK"].contains("10.244.1.11,tcp:8080,10.244.1.11"));
    // The kernel read the request and said no: restore would too.
    w.lock().unwrap().nl_fail = Some(false);
    let err = b
        .sync(&only(&p), &[p.key.clone()].into(), false)
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("fake netlink failure"),
        "{err:#}"
    );
    assert_eq!(w.lock().unwrap().ipset_payloads.len(), 2, "no restore");
    // A failed sync re-reads everything next time: a full sync, by restore.
    let stats = b.sync(&only(&p), &[p.key.clone()].into(), false).unwrap();
    assert!(stats.full);
    let w = w.lock().unwrap();
    assert_eq!(w.ipset_payloads.len(), 3);
    assert_eq!(
        w.sets["KUBE-LOOP-BACK"],
        ["10.244.1.10,tcp:8080,10.244.1.10".to_string()].into()
    );
}
