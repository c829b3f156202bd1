//! Large cluster mode: what loses its comment, how endpoints are counted, and
//! that a flip rewrites every affected chain.

use super::super::names::*;
use super::super::render::*;
use super::super::state::{render_full, Engine, Payload};
use super::*;
use crate::model::fixtures::{endpoint as ep, service_port as sp};
use crate::model::*;
use std::collections::{BTreeMap, BTreeSet};

/// `ns/<name>` with `n` ready endpoints (unique addresses per `base`).
fn service(name: &str, base: u8, cluster_ip: &str, n: usize) -> ServicePort {
    let eps = (0..n)
        .map(|e| ep(&format!("10.{base}.{}.{}", e / 250, e % 250 + 1), 8080))
        .collect();
    sp("ns", name, "http", Protocol::Tcp, cluster_ip, 80, eps)
}

fn ports_map(list: Vec<ServicePort>) -> BTreeMap<ServicePortKey, ServicePort> {
    list.into_iter().map(|p| (p.key.clone(), p)).collect()
}

/// A rule of a KUBE-SEP chain, or one that jumps to a KUBE-SEP chain.
fn per_endpoint(rule: &str) -> bool {
    rule.starts_with("-A KUBE-SEP-") || rule.contains(" -j KUBE-SEP-")
}

/// `rule` without its `-m comment --comment X` (X quoted or one word).
fn strip_comment(rule: &str) -> String {
    let Some(at) = rule.find(" -m comment --comment ") else {
        return rule.to_string();
    };
    let rest = &rule[at + " -m comment --comment ".len()..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').unwrap() + 2
    } else {
        rest.find(' ').unwrap_or(rest.len())
    };
    format!("{}{}", &rule[..at], &rest[end..])
}

#[test]
fn only_per_endpoint_rules_lose_their_comments() {
    // Every kind of rule at once: NodePort, externalIP, LB with source
    // ranges, Local external policy (SVL and EXT chains), session affinity.
    let mut local = ep("10.244.1.10", 8080);
    local.is_local = true;
    let mut p = sp(
        "app",
        "web",
        "http",
        Protocol::Tcp,
        "10.96.0.10",
        80,
        vec![local, ep("10.244.2.10", 8080), ep("10.244.3.10", 8080)],
    );
    p.node_port = Some(30080);
    p.external_ips = vec!["192.0.2.10".parse().unwrap()];
    p.load_balancer_ips = vec!["203.0.113.10".parse().unwrap()];
    p.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    p.external_policy_local = true;
    p.health_check_node_port = Some(31000);
    p.affinity_timeout = Some(600);
    let mut small_cfg = RenderConfig::new(Family::V4);
    small_cfg.masq.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    let large_cfg = RenderConfig {
        large_cluster: true,
        ..small_cfg.clone()
    };
    let small = render_service_port(&p, &small_cfg);
    let large = render_service_port(&p, &large_cfg);

    // Shared chains (KUBE-SERVICES, KUBE-NODEPORTS, filter) are untouched.
    assert!(!small.shared.is_empty());
    assert_eq!(small.shared, large.shared);
    // Same chains; per-endpoint rules are the small-mode rules minus their
    // comment, every other rule is unchanged.
    assert_eq!(small.chains.len(), large.chains.len());
    let mut elided = 0;
    for (s, l) in small.chains.iter().zip(&large.chains) {
        assert_eq!(s.name, l.name);
        assert_eq!(s.rules.len(), l.rules.len(), "{}", s.name);
        for (sr, lr) in s.rules.iter().zip(&l.rules) {
            if per_endpoint(sr) {
                assert!(sr.contains(" -m comment --comment "), "{sr}");
                assert_eq!(*lr, strip_comment(sr));
                assert!(!lr.contains("comment"), "{lr}");
                elided += 1;
            } else {
                assert_eq!(sr, lr);
            }
        }
    }
    // 3 SEP chains x 2 rules, SVC: 3 affinity + 3 split, SVL: 1 + 1.
    assert_eq!(elided, 6 + 6 + 2);
    // The rules that keep theirs: the ClusterIP masquerade rule, EXT, FW.
    let kept: Vec<&String> = large
        .chains
        .iter()
        .flat_map(|c| &c.rules)
        .filter(|r| r.contains(" -m comment "))
        .collect();
    assert!(kept
        .iter()
        .any(|r| r.contains("cluster IP\"") && r.contains("-j KUBE-MARK-MASQ")));
    assert!(kept.iter().any(|r| r.starts_with("-A KUBE-EXT-")));
    assert!(kept.iter().any(|r| r.starts_with("-A KUBE-FW-")));

    // The exact text, as upstream prints it in large cluster mode.
    let names = ServiceChains::of(&p);
    let seps: Vec<String> = p.endpoints.iter().map(|e| endpoint_chain(&p, e)).collect();
    let svc = large.chains.iter().find(|c| c.name == names.svc).unwrap();
    assert_eq!(
        svc.rules[1..],
        [
            format!(
                "-A {} -m recent --name {} --rcheck --seconds 600 --reap -j {}",
                names.svc, seps[0], seps[0]
            ),
            format!(
                "-A {} -m recent --name {} --rcheck --seconds 600 --reap -j {}",
                names.svc, seps[1], seps[1]
            ),
            format!(
                "-A {} -m recent --name {} --rcheck --seconds 600 --reap -j {}",
                names.svc, seps[2], seps[2]
            ),
            format!(
                "-A {} -m statistic --mode random --probability 0.3333333333 -j {}",
                names.svc, seps[0]
            ),
            format!(
                "-A {} -m statistic --mode random --probability 0.5000000000 -j {}",
                names.svc, seps[1]
            ),
            format!("-A {} -j {}", names.svc, seps[2]),
        ]
    );
    let sep = large.chains.iter().find(|c| c.name == seps[0]).unwrap();
    assert_eq!(
        sep.rules,
        [
            format!("-A {} -s 10.244.1.10 -j KUBE-MARK-MASQ", seps[0]),
            format!(
                "-A {} -m recent --name {} --set -m tcp -p tcp -j DNAT --to-destination 10.244.1.10:8080",
                seps[0], seps[0]
            ),
        ]
    );
}

#[test]
fn endpoints_are_counted_as_upstream_counts_them() {
    let mut a = service("a", 1, "10.96.0.1", 600);
    // Not ready, terminating, not serving: all counted.
    a.endpoints[0].ready = false;
    a.endpoints[1].terminating = true;
    a.endpoints[2].serving = false;
    let b = service("b", 2, "10.96.0.2", 400);
    assert_eq!(total_endpoints([&a, &b]), 1000);
    assert!(!is_large(1000));
    assert!(is_large(1001));
    // A port with no ClusterIP of this family is not programmed.
    let mut c = service("c", 3, "10.96.0.3", 5);
    c.cluster_ip = None;
    assert_eq!(total_endpoints([&a, &b, &c]), 1000);

    // Per family: 1,000 IPv4 endpoints plus IPv6 ones leave IPv4 off.
    let eps6 = (0..5)
        .map(|e| ep(&format!("fd00::{:x}", e + 1), 8080))
        .collect();
    let v6 = sp("ns", "a", "http", Protocol::Tcp, "fd00:96::1", 80, eps6);
    let mut ports = ports_map(vec![a.clone(), b.clone(), v6]);
    let mut cfg = RenderConfig::new(Family::V4);
    assert!(!update_mode(&mut cfg, &ports));
    assert!(!cfg.large_cluster);
    // One more IPv4 endpoint: on, reported once.
    let mut b2 = b.clone();
    b2.endpoints.push(ep("10.2.9.9", 8080));
    ports.insert(b2.key.clone(), b2);
    assert!(update_mode(&mut cfg, &ports));
    assert!(cfg.large_cluster);
    assert!(!update_mode(&mut cfg, &ports));
    // Back to 1,000: off again.
    ports.insert(b.key.clone(), b);
    assert!(update_mode(&mut cfg, &ports));
    assert!(!cfg.large_cluster);
}

#[test]
fn render_full_decides_the_mode_from_its_ports() {
    let a = service("a", 1, "10.96.0.1", 1000);
    let cfg = RenderConfig {
        large_cluster: true, // not read: 1,000 endpoints are not "large"
        ..RenderConfig::new(Family::V4)
    };
    let text = render_full(&[&a], &cfg);
    let seps = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| per_endpoint(l))
            .map(String::from)
            .collect()
    };
    assert_eq!(seps(&text).len(), 1000 * 3);
    assert!(seps(&text).iter().all(|l| l.contains(" -m comment ")));

    let b = service("b", 2, "10.96.0.2", 1);
    let text = render_full(&[&a, &b], &RenderConfig::new(Family::V4));
    assert_eq!(seps(&text).len(), 1001 * 3);
    assert!(seps(&text).iter().all(|l| !l.contains("comment")));
    // KUBE-SERVICES keeps its comments.
    assert!(text.contains("-A KUBE-SERVICES -m comment --comment \"ns/b:http cluster IP\""));
}

/// Plans a sync and commits every payload; returns them.
fn sync(
    e: &mut Engine,
    ports: &BTreeMap<ServicePortKey, ServicePort>,
    changed: &[&ServicePortKey],
    full: bool,
) -> Vec<Payload> {
    let changed: BTreeSet<ServicePortKey> = changed.iter().map(|k| (*k).clone()).collect();
    let plan = e.plan(ports, &changed, full);
    for p in &plan {
        e.commit(p);
    }
    plan
}

/// Every chain of the service ports that holds or makes a per-endpoint jump.
fn endpoint_chains(ports: &BTreeMap<ServicePortKey, ServicePort>) -> BTreeSet<String> {
    ports
        .values()
        .flat_map(|p| {
            let mut c: Vec<String> = p.endpoints.iter().map(|e| endpoint_chain(p, e)).collect();
            c.push(ServiceChains::of(p).svc);
            c
        })
        .collect()
}

fn written(plan: &[Payload]) -> BTreeSet<String> {
    plan.iter()
        .flat_map(|p| p.writes.iter().map(|((_, n), _, _)| n.clone()))
        .collect()
}

fn endpoint_rules(plan: &[Payload]) -> Vec<String> {
    plan.iter()
        .flat_map(|p| p.text.lines())
        .filter(|l| per_endpoint(l))
        .map(String::from)
        .collect()
}

#[test]
fn a_flip_rewrites_every_endpoint_chain_both_ways() {
    let a = service("a", 1, "10.96.0.1", 999);
    let b = service("b", 2, "10.96.0.2", 1);
    let (ka, kb) = (a.key.clone(), b.key.clone());
    let mut ports = ports_map(vec![a, b]);
    // Payloads of at most 1,200 lines, as with iptables-nft.
    let mut e = Engine::new(RenderConfig::new(Family::V4), 1200);
    let all: Vec<ServicePortKey> = ports.keys().cloned().collect();
    let first = sync(&mut e, &ports, &all.iter().collect::<Vec<_>>(), true);
    assert!(first.len() > 1);
    let rules = endpoint_rules(&first);
    assert_eq!(rules.len(), 1000 * 3);
    assert!(rules.iter().all(|r| r.contains(" -m comment ")));
    assert!(sync(&mut e, &ports, &[], false).is_empty());

    // One endpoint more on b (1,001 in all), an incremental sync naming only
    // b: a's chains are rewritten too, all without comments.
    ports
        .get_mut(&kb)
        .unwrap()
        .endpoints
        .push(ep("10.2.9.9", 8080));
    let flip = sync(&mut e, &ports, &[&kb], false);
    let w = written(&flip);
    let missing: Vec<_> = endpoint_chains(&ports).difference(&w).cloned().collect();
    assert!(missing.is_empty(), "not rewritten on the flip: {missing:?}");
    let rules = endpoint_rules(&flip);
    assert_eq!(rules.len(), 1001 * 3);
    assert!(rules.iter().all(|r| !r.contains("comment")), "{rules:?}");
    // Nothing is left to do: what the engine believes matches the new mode.
    assert!(sync(&mut e, &ports, &[], false).is_empty());

    // Still large: an ordinary change renders only that service, without
    // comments, and leaves the rest alone.
    let p = ports.get_mut(&ka).unwrap();
    p.endpoints[0] = ep("10.1.9.9", 8080);
    let change = sync(&mut e, &ports, &[&ka], false);
    assert_eq!(written(&change).len(), 2, "a's SVC chain and one new SEP");
    assert!(endpoint_rules(&change)
        .iter()
        .all(|r| !r.contains("comment")));

    // Back to 1,000: every chain gets its comments back.
    ports.get_mut(&kb).unwrap().endpoints.pop();
    let back = sync(&mut e, &ports, &[&kb], false);
    let missing: Vec<_> = endpoint_chains(&ports)
        .difference(&written(&back))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "not rewritten on the flip back: {missing:?}"
    );
    let rules = endpoint_rules(&back);
    assert_eq!(rules.len(), 1000 * 3);
    assert!(rules.iter().all(|r| r.contains(" -m comment ")));
    assert!(sync(&mut e, &ports, &[], false).is_empty());
}

#[test]
fn a_flip_interrupted_by_a_failed_payload_completes_on_the_next_sync() {
    let a = service("a", 1, "10.96.0.1", 1000);
    let ka = a.key.clone();
    let mut ports = ports_map(vec![a]);
    let mut e = Engine::new(RenderConfig::new(Family::V4), 1200);
    sync(&mut e, &ports, &[&ka], true);

    ports
        .get_mut(&ka)
        .unwrap()
        .endpoints
        .push(ep("10.1.9.9", 8080));
    let plan = e.plan(&ports, &[ka.clone()].into(), false);
    assert!(plan.len() > 1);
    // The first payload lands, the second fails.
    e.commit(&plan[0]);
    e.forget(&plan[1]);
    // The next sync, with nothing changed, still finishes the flip.
    let again = sync(&mut e, &ports, &[], false);
    let missing: Vec<_> = endpoint_chains(&ports)
        .difference(&written(&again))
        .cloned()
        .collect();
    assert!(missing.is_empty(), "{missing:?}");
    assert!(endpoint_rules(&again)
        .iter()
        .all(|r| !r.contains("comment")));
    assert!(sync(&mut e, &ports, &[], false).is_empty());
}
