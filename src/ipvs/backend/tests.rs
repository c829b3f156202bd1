//! The IPVS backend against fake kernels: what it writes, and only that.

use super::*;
use crate::ipvs::wire::{DestStats, Destination};
use crate::model::fixtures::{endpoint, service_port};
use crate::model::{Protocol, ServicePort};
use crate::xtables::fake::FakeIptables;
use std::sync::Mutex;

#[derive(Default)]
struct World {
    vs: BTreeMap<ServiceId, Current>,
    ops: Vec<Op>,
    link: Option<BTreeSet<IpAddr>>,
    /// The iptables side.
    ipt: FakeIptables,
    ipset_payloads: Vec<String>,
    /// Entry changes sent over (fake) netlink, one Vec per call.
    ipset_changes: Vec<Vec<String>>,
    /// Some(fallback): netlink changes fail so.
    nl_fail: Option<bool>,
    sets: BTreeMap<String, BTreeSet<String>>,
    /// IPVS calls in order: "dests <vip>:<port>" reads and applied ops.
    ipvs_log: Vec<String>,
}

type W = Arc<Mutex<World>>;

struct FakeIpvs(W);
impl IpvsKernel for FakeIpvs {
    fn list(&mut self) -> Result<BTreeMap<ServiceId, Current>> {
        Ok(self.0.lock().unwrap().vs.clone())
    }
    fn dests(&mut self, id: &ServiceId) -> Result<Vec<(Destination, DestStats)>> {
        let mut w = self.0.lock().unwrap();
        w.ipvs_log.push(format!("dests {}:{}", id.addr, id.port));
        Ok(w.vs.get(id).map(|c| c.dests.clone()).unwrap_or_default())
    }
    fn apply(&mut self, op: &Op) -> Result<()> {
        let mut w = self.0.lock().unwrap();
        w.ops.push(op.clone());
        w.ipvs_log.push(format!("{op:?}"));
        match op {
            Op::AddService(v) => {
                w.vs.insert(
                    v.id.clone(),
                    Current {
                        vs: v.clone(),
                        dests: vec![],
                    },
                );
            }
            Op::UpdateService(v) => w.vs.get_mut(&v.id).unwrap().vs = v.clone(),
            Op::DelService(id) => {
                w.vs.remove(id);
            }
            Op::AddDest(id, d) => {
                w.vs.get_mut(id)
                    .unwrap()
                    .dests
                    .push((d.clone(), DestStats::default()))
            }
            Op::UpdateDest(id, d) => {
                for x in &mut w.vs.get_mut(id).unwrap().dests {
                    if x.0.addr == d.addr && x.0.port == d.port {
                        x.0.weight = d.weight;
                    }
                }
            }
            Op::DelDest(id, d) => {
                w.vs.get_mut(id)
                    .unwrap()
                    .dests
                    .retain(|x| !(x.0.addr == d.addr && x.0.port == d.port))
            }
        }
        Ok(())
    }
}

struct FakeLink(W);
impl LinkKernel for FakeLink {
    fn ensure_link(&mut self) -> Result<bool> {
        let mut w = self.0.lock().unwrap();
        if w.link.is_none() {
            w.link = Some(BTreeSet::new());
            return Ok(true);
        }
        Ok(false)
    }
    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>> {
        Ok(self.0.lock().unwrap().link.clone().unwrap_or_default())
    }
    fn add_address(&mut self, ip: IpAddr) -> Result<()> {
        self.0
            .lock()
            .unwrap()
            .link
            .as_mut()
            .expect("link exists")
            .insert(ip);
        Ok(())
    }
    fn del_address(&mut self, ip: IpAddr) -> Result<()> {
        if let Some(l) = self.0.lock().unwrap().link.as_mut() {
            l.remove(&ip);
        }
        Ok(())
    }
    fn delete_link(&mut self) -> Result<()> {
        self.0.lock().unwrap().link = None;
        Ok(())
    }
    fn host_addresses(&mut self) -> Result<BTreeSet<IpAddr>> {
        Ok([
            "192.168.10.5".parse().unwrap(),
            "198.51.100.77".parse().unwrap(),
        ]
        .into())
    }
}

fn backend(w: &W, sysctl_root: &std::path::Path) -> IpvsBackend {
    let (a, b) = (w.clone(), w.clone());
    let ipt = w.lock().unwrap().ipt.factory();
    let s = IpvsSettings {
        scheduler: "rr".into(),
        strict_arp: true,
        exclude_cidrs: vec!["172.30.0.0/16".parse().unwrap()],
        nodeport_addresses: vec![],
        nodeport_primary: false,
        families: vec![Masquerade {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Masquerade::new(Family::V4)
        }],
        drain_timeout: Duration::from_secs(600),
        drain_check: Duration::from_secs(2),
        sysctl_root: sysctl_root.to_path_buf(),
    };
    IpvsBackend::new(
        s,
        Arc::new(move || Ok(Box::new(FakeIpvs(a.clone())) as Box<dyn IpvsKernel>)),
        Arc::new(move || Box::new(FakeLink(b.clone())) as Box<dyn LinkKernel>),
        ipt,
        Box::new(FakeIpset(w.clone())),
    )
}

fn sysctl_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for s in sysctl::plan(Some((4, 19)), true) {
        let p = d.path().join(s.key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "0\n").unwrap();
    }
    d
}

fn web(eps: &[&str]) -> ServicePort {
    let mut p = service_port(
        "ns",
        "web",
        "",
        Protocol::Tcp,
        "10.96.0.10",
        80,
        eps.iter().map(|ip| endpoint(ip, 8080)).collect(),
    );
    p.node_port = Some(30080);
    p.external_ips = vec![
        "192.0.2.10".parse().unwrap(),
        "198.51.100.77".parse().unwrap(),
    ];
    p
}

fn ports(list: &[ServicePort]) -> Ports {
    list.iter().map(|p| (p.key.clone(), p.clone())).collect()
}

/// A client holds a connection to real server `addr` of `vs`.
fn hold_connection(w: &W, vs: &ServiceId, addr: &str) {
    for d in &mut w.lock().unwrap().vs.get_mut(vs).unwrap().dests {
        if d.0.addr.to_string() == addr {
            d.1.active = 1;
        }
    }
}

fn id(addr: &str, port: u16) -> ServiceId {
    ServiceId {
        addr: addr.parse().unwrap(),
        protocol: Protocol::Tcp,
        port,
    }
}

#[test]
fn first_sync_programs_everything() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    let p = web(&["10.244.1.10", "10.244.2.10"]);
    b.sync(&ports(&[p]), &BTreeSet::new(), true).unwrap();
    let w = w.lock().unwrap();
    let ids: Vec<_> =
        w.vs.keys()
            .map(|i| format!("{}:{}", i.addr, i.port))
            .collect();
    assert_eq!(
        ids,
        vec![
            "10.96.0.10:80",
            "192.0.2.10:80",
            "192.168.10.5:30080",
            "198.51.100.77:80",
            "198.51.100.77:30080"
        ],
        "clusterIP, both externalIPs, a NodePort per node address"
    );
    assert!(w
        .vs
        .values()
        .all(|c| c.dests.len() == 2 && c.vs.scheduler == "rr"));
    let bound: Vec<_> = w
        .link
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        bound,
        vec!["10.96.0.10", "192.0.2.10"],
        "an externalIP already on the node is not bound"
    );
    assert_eq!(
        w.sets["KUBE-CLUSTER-IP"],
        ["10.96.0.10,tcp:80".to_string()].into()
    );
    assert_eq!(w.sets["KUBE-NODE-PORT-TCP"], ["30080".to_string()].into());
    assert_eq!(w.sets["KUBE-EXTERNAL-IP"].len(), 2);
    assert_eq!(w.sets["KUBE-IPVS-IPS"].len(), 2);
    let ipt = w.ipt.state();
    assert_eq!(ipt.restores.len(), 1);
    assert!(ipt.restores[0]
        .contains("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"));
    assert_eq!(ipt.jumps.len(), 9);
    let read = |k: &str| std::fs::read_to_string(dir.path().join(k)).unwrap();
    assert_eq!(read("net/ipv4/vs/conntrack"), "1");
    assert_eq!(read("net/ipv4/conf/all/arp_ignore"), "1");
    assert_eq!(read("net/ipv4/conf/all/arp_announce"), "2");
}

#[test]
fn an_endpoint_change_touches_only_its_real_servers() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    let other = service_port(
        "ns",
        "other",
        "",
        Protocol::Udp,
        "10.96.0.53",
        53,
        vec![endpoint("10.244.3.3", 53)],
    );
    let p = web(&["10.244.1.10", "10.244.2.10"]);
    b.sync(&ports(&[p.clone(), other.clone()]), &BTreeSet::new(), true)
        .unwrap();
    w.lock().unwrap().ops.clear();
    let restores = w.lock().unwrap().ipt.state().restores.len();
    let ipsets = w.lock().unwrap().ipset_payloads.len();
    let changes = w.lock().unwrap().ipset_changes.len();

    let p2 = web(&["10.244.1.10", "10.244.2.10", "10.244.2.11"]);
    let stats = b
        .sync(
            &ports(&[p2.clone(), other.clone()]),
            &[p2.key.clone()].into(),
            false,
        )
        .unwrap();
    let w2 = w.lock().unwrap();
    assert_eq!(
        w2.ops.len(),
        5,
        "one AddDest per virtual server: {:?}",
        w2.ops
    );
    assert!(w2
        .ops
        .iter()
        .all(|o| matches!(o, Op::AddDest(_, d) if d.addr.to_string() == "10.244.2.11")));
    assert_eq!(
        w2.ipt.state().restores.len(),
        restores,
        "no iptables write: no set became (non-)empty"
    );
    assert_eq!(w2.ipset_payloads.len(), ipsets, "no ipset change");
    assert_eq!(w2.ipset_changes.len(), changes, "no ipset change");
    assert!(!stats.full);
}

#[test]
fn deleting_a_service_removes_its_servers_addresses_and_entries() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    let p = web(&["10.244.1.10"]);
    b.sync(&ports(std::slice::from_ref(&p)), &BTreeSet::new(), true)
        .unwrap();
    b.sync(&Ports::new(), &[p.key.clone()].into(), false)
        .unwrap();
    let w = w.lock().unwrap();
    assert!(w.vs.is_empty(), "{:?}", w.vs.keys());
    assert!(w.link.as_ref().unwrap().is_empty());
    assert!(w.sets.values().all(|s| s.is_empty()), "{:?}", w.sets);
    let ipt = w.ipt.state();
    let last = ipt.restores.last().unwrap();
    assert!(
        !last.contains("KUBE-CLUSTER-IP dst,dst -j ACCEPT"),
        "rules for empty sets go"
    );
}

#[test]
fn busy_tcp_real_servers_drain_then_go() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    let p = web(&["10.244.1.10", "10.244.2.10"]);
    b.sync(&ports(std::slice::from_ref(&p)), &BTreeSet::new(), true)
        .unwrap();
    let cid = id("10.96.0.10", 80);
    // A client holds a connection to 10.244.2.10 through the clusterIP.
    hold_connection(&w, &cid, "10.244.2.10");
    let p2 = web(&["10.244.1.10"]);
    b.sync(
        &ports(std::slice::from_ref(&p2)),
        &[p2.key.clone()].into(),
        false,
    )
    .unwrap();
    {
        let w = w.lock().unwrap();
        let d = &w.vs[&cid].dests;
        assert_eq!(d.len(), 2, "still there while busy");
        assert_eq!(
            d.iter()
                .find(|x| x.0.addr.to_string() == "10.244.2.10")
                .unwrap()
                .0
                .weight,
            0
        );
        // Idle ones (the other virtual servers) went at once.
        assert_eq!(w.vs[&id("192.0.2.10", 80)].dests.len(), 1);
    }
    assert_eq!(
        b.follow_up(),
        Some(Duration::from_secs(2)),
        "asks to look again"
    );
    // Nothing changed yet: the follow-up sync keeps it.
    b.sync(&ports(std::slice::from_ref(&p2)), &BTreeSet::new(), false)
        .unwrap();
    assert_eq!(w.lock().unwrap().vs[&cid].dests.len(), 2);
    // The connection closes: the next follow-up removes it.
    for d in &mut w.lock().unwrap().vs.get_mut(&cid).unwrap().dests {
        d.1.active = 0;
    }
    b.sync(&ports(std::slice::from_ref(&p2)), &BTreeSet::new(), false)
        .unwrap();
    assert_eq!(w.lock().unwrap().vs[&cid].dests.len(), 1);
    assert_eq!(b.follow_up(), None);
}

#[test]
fn a_new_real_server_goes_in_before_the_leaving_one_is_read_and_drained() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    let p = web(&["10.244.1.10", "10.244.2.10"]);
    b.sync(&ports(std::slice::from_ref(&p)), &BTreeSet::new(), true)
        .unwrap();
    let cid = id("10.96.0.10", 80);
    hold_connection(&w, &cid, "10.244.2.10");
    w.lock().unwrap().ipvs_log.clear();
    // 10.244.2.10 is replaced by 10.244.2.11.
    let p2 = web(&["10.244.1.10", "10.244.2.11"]);
    b.sync(
        &ports(std::slice::from_ref(&p2)),
        &[p2.key.clone()].into(),
        false,
    )
    .unwrap();
    let w = w.lock().unwrap();
    let log = &w.ipvs_log;
    let at = |pred: &dyn Fn(&String) -> bool| log.iter().position(pred).unwrap();
    let last_add = log.iter().rposition(|l| l.starts_with("AddDest")).unwrap();
    let first_read = at(&|l| l.starts_with("dests"));
    let first_leave = at(&|l| l.starts_with("DelDest") || l.starts_with("UpdateDest"));
    assert!(
        last_add < first_read && first_read < first_leave,
        "every new real server first, then reads, then removals: {log:#?}"
    );
    assert_eq!(
        log.iter().filter(|l| l.starts_with("AddDest")).count(),
        5,
        "one per virtual server: {log:#?}"
    );
    assert!(log.contains(&"dests 10.96.0.10:80".to_string()));
    // The busy one drains (weight 0) with the connection count read after the add.
    let old = w.vs[&cid]
        .dests
        .iter()
        .find(|x| x.0.addr.to_string() == "10.244.2.10")
        .unwrap();
    assert_eq!(old.0.weight, 0);
    assert_eq!(w.vs[&cid].dests.len(), 3);
}

#[test]
fn full_sync_removes_strangers_but_not_excluded_ones() {
    let w = W::default();
    let dir = sysctl_dir();
    {
        let mut w = w.lock().unwrap();
        for a in ["10.96.9.9", "172.30.1.1"] {
            let v = crate::ipvs::wire::VirtualServer {
                id: id(a, 80),
                scheduler: "rr".into(),
                persistence: None,
            };
            w.vs.insert(
                v.id.clone(),
                Current {
                    vs: v,
                    dests: vec![],
                },
            );
        }
        w.link = Some(["10.96.9.9".parse().unwrap()].into());
        w.sets.insert(
            "KUBE-CLUSTER-IP".into(),
            ["10.96.9.9,tcp:80".to_string()].into(),
        );
    }
    let mut b = backend(&w, dir.path());
    b.sync(&ports(&[web(&["10.244.1.10"])]), &BTreeSet::new(), true)
        .unwrap();
    let w = w.lock().unwrap();
    assert!(
        !w.vs.contains_key(&id("10.96.9.9", 80)),
        "left by an earlier run: removed"
    );
    assert!(
        w.vs.contains_key(&id("172.30.1.1", 80)),
        "in ipvs.excludeCIDRs: untouched"
    );
    assert!(!w
        .link
        .as_ref()
        .unwrap()
        .contains(&"10.96.9.9".parse::<IpAddr>().unwrap()));
    assert_eq!(
        w.sets["KUBE-CLUSTER-IP"],
        ["10.96.0.10,tcp:80".to_string()].into()
    );
}

#[test]
fn cleanup_removes_what_ipvs_mode_owns() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    b.sync(&ports(&[web(&["10.244.1.10"])]), &BTreeSet::new(), true)
        .unwrap();
    w.lock()
        .unwrap()
        .sets
        .insert("SOMEONE-ELSE".into(), BTreeSet::new());
    b.cleanup().unwrap();
    let w = w.lock().unwrap();
    assert!(w.vs.is_empty());
    assert!(w.link.is_none());
    assert!(w.ipt.state().jumps.is_empty());
    assert_eq!(w.sets.keys().collect::<Vec<_>>(), vec!["SOMEONE-ELSE"]);
    let ipt = w.ipt.state();
    let last = ipt.restores.last().unwrap();
    assert!(
        last.contains("-X KUBE-IPVS-FILTER") && last.contains("-X KUBE-LOAD-BALANCER"),
        "{last}"
    );
}

#[test]
fn a_drain_whose_real_server_vanished_is_forgotten() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    let p = web(&["10.244.1.10", "10.244.2.10"]);
    b.sync(&ports(std::slice::from_ref(&p)), &BTreeSet::new(), true)
        .unwrap();
    let cid = id("10.96.0.10", 80);
    for d in &mut w.lock().unwrap().vs.get_mut(&cid).unwrap().dests {
        d.1.active = 1;
    }
    let p2 = web(&["10.244.1.10"]);
    b.sync(
        &ports(std::slice::from_ref(&p2)),
        &[p2.key.clone()].into(),
        false,
    )
    .unwrap();
    assert!(b.follow_up().is_some());
    // Someone deletes the draining real server by hand; a full sync re-reads.
    w.lock()
        .unwrap()
        .vs
        .get_mut(&cid)
        .unwrap()
        .dests
        .retain(|d| d.0.weight != 0);
    b.sync(&ports(std::slice::from_ref(&p2)), &BTreeSet::new(), true)
        .unwrap();
    assert_eq!(
        b.follow_up(),
        None,
        "no follow-up syncs for a drain that ended"
    );
}

#[test]
fn ports_of_a_family_the_proxy_does_not_program_are_ignored() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    let v6 = service_port(
        "ns",
        "six",
        "",
        Protocol::Tcp,
        "fd00::10",
        80,
        vec![endpoint("fd00:244::10", 8080)],
    );
    w.lock().unwrap().link = Some(["fd00::99".parse().unwrap()].into());
    b.sync(
        &ports(&[web(&["10.244.1.10"]), v6.clone()]),
        &BTreeSet::new(),
        true,
    )
    .unwrap();
    b.sync(
        &ports(&[web(&["10.244.1.10"]), v6.clone()]),
        &[v6.key.clone()].into(),
        false,
    )
    .unwrap();
    let w = w.lock().unwrap();
    assert!(w.vs.keys().all(|i| i.addr.is_ipv4()), "{:?}", w.vs.keys());
    let link = w.link.as_ref().unwrap();
    assert!(
        link.contains(&"fd00::99".parse::<IpAddr>().unwrap()),
        "the other family's addresses are left alone"
    );
    assert!(!link.contains(&"fd00::10".parse::<IpAddr>().unwrap()));
}

#[test]
fn incremental_ipset_changes_follow_each_other() {
    let w = W::default();
    let dir = sysctl_dir();
    let mut b = backend(&w, dir.path());
    let web = web(&["10.244.1.10"]);
    b.sync(&ports(std::slice::from_ref(&web)), &BTreeSet::new(), true)
        .unwrap();
    // Added incrementally, then removed incrementally: the second change must
    // know what the first wrote.
    let dns = service_port(
        "ns",
        "dns",
        "",
        Protocol::Udp,
        "10.96.0.53",
        53,
        vec![endpoint("10.244.3.3", 53)],
    );
    let both = ports(&[web.clone(), dns.clone()]);
    b.sync(&both, &[dns.key.clone()].into(), false).unwrap();
    assert!(w.lock().unwrap().sets["KUBE-CLUSTER-IP"].contains("10.96.0.53,udp:53"));
    b.sync(
        &ports(std::slice::from_ref(&web)),
        &[dns.key.clone()].into(),
        false,
    )
    .unwrap();
    let w = w.lock().unwrap();
    assert_eq!(
        w.sets["KUBE-CLUSTER-IP"],
        ["10.96.0.10,tcp:80".to_string()].into()
    );
    assert!(!w.sets["KUBE-IPVS-IPS"].contains("10.96.0.53"));
    assert_eq!(w.sets["KUBE-IPVS-IPS"].len(), 2);
}

mod ipset_sync;
use ipset_sync::FakeIpset;
