//! The desired nftables state and the transactions it plans.

use super::*;
use crate::model::fixtures::{endpoint, numbered, ports as ports_map};
use crate::model::{Family, ServicePort};
use std::time::Instant;

fn cfg() -> NftConfig {
    let mut c = NftConfig::new(Family::V4);
    c.masq.cluster_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
    c
}

/// A listing from `nft -t list table` text (what the tests write).
fn parse_listing(text: &str) -> Listing {
    let mut l = Listing::default();
    let mut in_chain: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            l.chains.insert(name.clone(), 0);
            in_chain = Some(name);
        } else if let Some(rest) = t.strip_prefix("set ").or_else(|| t.strip_prefix("map ")) {
            l.sets.insert(rest.trim_end_matches('{').trim().to_string());
        } else if t == "}" {
            in_chain = None;
        } else if let Some(c) = &in_chain {
            if !t.is_empty() && !t.starts_with("type ") {
                *l.chains.get_mut(c).unwrap() += 1;
            }
        }
    }
    l
}

fn lines<'a>(p: &'a Plan, prefix: &str) -> Vec<&'a str> {
    p.script.lines().filter(|l| l.starts_with(prefix)).collect()
}

fn primed(ports: &Ports) -> FamilyState {
    let mut st = FamilyState::new(cfg());
    st.plan_full(ports, None, false, Instant::now());
    st.full_applied();
    st
}

#[test]
fn a_full_sync_writes_fixed_chains_dispatch_chains_and_every_element() {
    let ports = ports_map((0..3).map(|i| numbered(i, 2)).collect());
    let mut st = FamilyState::new(cfg());
    let p = st.plan_full(&ports, None, false, Instant::now());
    assert!(p.script.starts_with("add table ip kube-proxy-rs\n"));
    assert!(p.script.contains("flush map ip kube-proxy-rs vips\n"));
    assert!(p.script.contains(
        "add rule ip kube-proxy-rs c2 dnat ip to ip daddr . udp dport . numgen random mod 2 map @cluster-eps-udp\n"
    ));
    assert!(p
        .script
        .contains("add element ip kube-proxy-rs pod-cidrs { 10.244.0.0/16 }"));
    let vips = lines(&p, "add element ip kube-proxy-rs vips ");
    assert_eq!(vips.len(), 1, "one command for the map");
    assert_eq!(vips[0].matches("goto cluster-ip").count(), 3);
    // Two endpoints each: six (VIP . bucket) elements, three groups.
    assert_eq!(p.elements_added, 1 + 3 + 3 + 6 + 6);
    assert!(lines(&p, "delete ").is_empty());
}

#[test]
fn an_endpoint_change_is_element_updates_only() {
    let mut ports = ports_map((0..3).map(|i| numbered(i, 3)).collect());
    let mut st = primed(&ports);
    let key = ports.keys().nth(1).unwrap().clone();
    // Replace one endpoint; the count stays 3.
    ports.get_mut(&key).unwrap().endpoints[2] = endpoint("10.9.9.9", 8080);
    let p = st.plan_changes(&ports, &[key.clone()].into(), Instant::now());
    assert_eq!(p.chains_written, 0, "{}", p.script);
    assert!(!p.script.contains(" chain "), "{}", p.script);
    assert_eq!(
        p.script,
        "delete element ip kube-proxy-rs hairpin { 10.1.1.3 . 10.1.1.3 }\n\
         delete element ip kube-proxy-rs cluster-eps-tcp { 10.96.0.2 . 80 . 2 }\n\
         add element ip kube-proxy-rs hairpin { 10.9.9.9 . 10.9.9.9 }\n\
         add element ip kube-proxy-rs cluster-eps-tcp { 10.96.0.2 . 80 . 2 : 10.9.9.9 . 8080 }\n"
    );
    // Nothing changed: nothing to write.
    assert!(st
        .plan_changes(&ports, &[key].into(), Instant::now())
        .script
        .is_empty());
}

#[test]
fn a_new_endpoint_count_adds_its_dispatch_chain_once() {
    let mut ports = ports_map((0..2).map(|i| numbered(i, 2)).collect());
    let mut st = primed(&ports);
    let keys: Vec<_> = ports.keys().cloned().collect();
    for k in &keys {
        ports
            .get_mut(k)
            .unwrap()
            .endpoints
            .push(endpoint("10.8.0.1", 8080));
    }
    let p = st.plan_changes(&ports, &keys.iter().cloned().collect(), Instant::now());
    assert_eq!(lines(&p, "add chain ip kube-proxy-rs c3").len(), 1);
    let groups = lines(&p, "add element ip kube-proxy-rs cluster-groups");
    assert_eq!(groups.len(), 1);
    assert!(
        groups[0].contains("10.96.0.1 . tcp . 80 : goto c3"),
        "{}",
        groups[0]
    );
    // The chain is there now: the next service that needs it reuses it.
    let k = keys[0].clone();
    ports.get_mut(&k).unwrap().endpoints.pop();
    let p = st.plan_changes(&ports, &[k.clone()].into(), Instant::now());
    assert!(lines(&p, "add chain").is_empty(), "c2 exists: {}", p.script);
    ports
        .get_mut(&k)
        .unwrap()
        .endpoints
        .push(endpoint("10.8.0.2", 8080));
    let p = st.plan_changes(&ports, &[k].into(), Instant::now());
    assert!(lines(&p, "add chain").is_empty(), "c3 exists: {}", p.script);
}

#[test]
fn removing_a_service_deletes_its_elements_and_an_empty_one_rejects() {
    let mut ports = ports_map((0..2).map(|i| numbered(i, 1)).collect());
    let mut st = primed(&ports);
    let k = ports.keys().next().unwrap().clone();
    let removed = ports.remove(&k).unwrap();
    let p = st.plan_changes(&ports, &[k.clone()].into(), Instant::now());
    assert!(lines(&p, "add ").is_empty(), "{}", p.script);
    assert_eq!(
        p.elements_deleted, 4,
        "vip, group, bucket, hairpin: {}",
        p.script
    );
    // Back without endpoints: REJECT, in the filter map.
    let mut empty = removed;
    empty.endpoints.clear();
    ports.insert(k.clone(), empty);
    let p = st.plan_changes(&ports, &[k].into(), Instant::now());
    assert_eq!(
        p.script,
        "add element ip kube-proxy-rs no-endpoint-internal { 10.96.0.1 . tcp . 80 : goto reject-chain }\n"
    );
}

#[test]
fn the_first_claim_of_a_vip_tuple_wins_and_the_next_takes_over() {
    let mut a = numbered(0, 1);
    a.key.name.name = "a".into();
    a.external_ips = vec!["192.0.2.1".parse().unwrap()];
    let mut b = numbered(1, 1);
    b.key.name.name = "b".into();
    b.external_ips = vec!["192.0.2.1".parse().unwrap()];
    let mut ports = ports_map(vec![a.clone(), b.clone()]);
    let mut st = primed(&ports);
    let full = st.plan_full(&ports, None, false, Instant::now());
    let eps = lines(&full, "add element ip kube-proxy-rs cluster-eps-tcp")[0].to_string();
    assert!(
        eps.contains("192.0.2.1 . 80 . 0 : 10.1.0.1 . 8080"),
        "a's: {eps}"
    );
    assert!(!eps.contains("192.0.2.1 . 80 . 0 : 10.1.1.1"), "{eps}");
    st.full_applied();
    ports.remove(&a.key);
    let p = st.plan_changes(&ports, &[a.key.clone()].into(), Instant::now());
    assert!(
        p.script.contains(
            "add element ip kube-proxy-rs cluster-eps-tcp { 192.0.2.1 . 80 . 0 : 10.1.1.1 . 8080 }"
        ),
        "{}",
        p.script
    );
}

fn sticky() -> ServicePort {
    let mut sp = numbered(0, 2);
    sp.affinity_timeout = Some(600);
    sp
}

#[test]
fn session_affinity_gets_chains_and_sets_of_its_own() {
    let mut ports = ports_map(vec![sticky()]);
    let mut st = FamilyState::new(cfg());
    let p = st.plan_full(&ports, None, false, Instant::now());
    let sets = lines(&p, "add set ip kube-proxy-rs affinity-ep-");
    assert_eq!(sets.len(), 2, "{}", p.script);
    assert!(sets[0].ends_with("{ type ipv4_addr; flags dynamic,timeout; timeout 600s; }"));
    let pick: Vec<&str> = lines(&p, "add rule ip kube-proxy-rs affinity-c-");
    assert_eq!(pick.len(), 3, "two checks and the pick: {pick:?}");
    assert!(pick[2].contains("numgen random mod 2 vmap { 0 : goto affinity-ep-"));
    let ep_rules = lines(&p, "add rule ip kube-proxy-rs affinity-ep-");
    assert!(ep_rules[0].contains("update @affinity-ep-"));
    assert!(ep_rules[0].contains("meta l4proto tcp dnat ip to 10.1.0."));
    assert!(
        lines(&p, "add element ip kube-proxy-rs cluster-eps").is_empty(),
        "no buckets for it"
    );
    st.full_applied();
    let t0 = Instant::now();
    let later = |n: u64| t0 + DOOM_DELAY * n as u32;
    // Its endpoints change: its chains are rewritten; the old endpoint's
    // chain is emptied now and deleted (with its set) by a later sync.
    let k = ports.keys().next().unwrap().clone();
    ports.get_mut(&k).unwrap().endpoints[1] = endpoint("10.7.7.7", 8080);
    let p = st.plan_changes(&ports, &[k.clone()].into(), t0);
    assert_eq!(lines(&p, "add set").len(), 1, "{}", p.script);
    assert!(
        lines(&p, "delete ")
            .iter()
            .all(|l| l.starts_with("delete element")),
        "{}",
        p.script
    );
    let flushed = lines(&p, "flush chain");
    assert_eq!(
        flushed.len(),
        3,
        "new endpoint's, the pick chain, the old endpoint's: {flushed:?}"
    );
    assert_eq!(st.next_doomed(), Some(t0 + DOOM_DELAY));
    // Not yet due: nothing deleted.
    assert!(st
        .plan_changes(&ports, &BTreeSet::new(), t0)
        .script
        .is_empty());
    let p = st.plan_changes(&ports, &BTreeSet::new(), later(1));
    assert_eq!(lines(&p, "delete chain").len(), 1, "{}", p.script);
    assert_eq!(lines(&p, "delete set").len(), 1, "{}", p.script);
    let pos = |s: &str| p.script.find(s).unwrap();
    assert!(pos("delete chain") < pos("delete set"));
    assert_eq!(st.next_doomed(), None);
    // A new timeout: new sets and chains; the old ones go later.
    ports.get_mut(&k).unwrap().affinity_timeout = Some(60);
    let p = st.plan_changes(&ports, &[k.clone()].into(), later(2));
    assert_eq!(lines(&p, "add set").len(), 2, "{}", p.script);
    assert!(lines(&p, "add set")[0].ends_with("timeout 60s; }"));
    let pos = |s: &str| p.script.find(s).unwrap();
    assert!(pos("add set") < pos("add element"));
    let p = st.plan_changes(&ports, &BTreeSet::new(), later(3));
    assert_eq!(lines(&p, "delete set").len(), 2, "{}", p.script);
    assert_eq!(lines(&p, "delete chain").len(), 3, "{}", p.script);
    // Removed: everything of it goes, pick chain before endpoint chains.
    ports.clear();
    st.plan_changes(&ports, &[k].into(), later(4));
    let p = st.plan_changes(&ports, &BTreeSet::new(), later(5));
    let deleted = lines(&p, "delete chain");
    assert_eq!(deleted.len(), 3, "{}", p.script);
    assert!(deleted[0].contains("affinity-c-"));
    assert_eq!(lines(&p, "delete set").len(), 2);
}

#[test]
fn a_full_sync_deletes_what_nothing_wants_and_recreate_starts_anew() {
    let ports = ports_map(vec![numbered(0, 2)]);
    let mut st = FamilyState::new(cfg());
    let listing = parse_listing(
        "table ip kube-proxy-rs {\n\tset affinity-ep-old {\n\t\ttype ipv4_addr\n\t}\n\tmap vips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t}\n\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @vips\n\t}\n\tchain c2 {\n\t\tdnat\n\t}\n\tchain c7 {\n\t\tdnat\n\t}\n\tchain affinity-ep-old {\n\t\tupdate\n\t}\n\tchain affinity-c-old {\n\t\tip saddr\n\t\tnumgen\n\t}\n}\n",
    );
    assert_eq!(listing.chains["affinity-c-old"], 2);
    assert!(listing.sets.contains("affinity-ep-old") && listing.sets.contains("vips"));
    let t0 = Instant::now();
    let p = st.plan_full(&ports, Some(&listing), false, t0);
    // Emptied now, deleted by a later sync: pick chains first, sets last.
    assert!(lines(&p, "delete ").is_empty(), "{}", p.script);
    for c in ["affinity-c-old", "affinity-ep-old", "c7"] {
        assert!(
            p.script
                .contains(&format!("flush chain ip kube-proxy-rs {c}\n")),
            "{c}"
        );
    }
    st.full_applied();
    let p = st.plan_changes(&ports, &BTreeSet::new(), t0 + DOOM_DELAY);
    assert_eq!(
        lines(&p, "delete "),
        [
            "delete chain ip kube-proxy-rs affinity-c-old",
            "delete chain ip kube-proxy-rs affinity-ep-old",
            "delete chain ip kube-proxy-rs c7",
            "delete set ip kube-proxy-rs affinity-ep-old"
        ]
    );
    let p = st.plan_full(&ports, Some(&listing), true, Instant::now());
    assert!(p
        .script
        .starts_with("delete table ip kube-proxy-rs\nadd table"));
    assert!(lines(&p, "delete chain").is_empty());
}

#[test]
fn the_periodic_check_compares_chains_and_rule_counts() {
    let ports = ports_map(vec![numbered(0, 2), sticky()]);
    let mut st = FamilyState::new(cfg());
    let p = st.plan_full(&ports, None, false, Instant::now());
    st.full_applied();
    // A listing made from the script itself: every chain with its rules.
    let mut text = String::from("table ip kube-proxy-rs {\n");
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in p.script.lines() {
        if let Some(rest) = l.strip_prefix("add chain ip kube-proxy-rs ") {
            chains
                .entry(rest.split(' ').next().unwrap().into())
                .or_default();
        } else if let Some(rest) = l.strip_prefix("add rule ip kube-proxy-rs ") {
            let (c, r) = rest.split_once(' ').unwrap();
            chains.entry(c.into()).or_default().push(r.into());
        }
    }
    for m in MapId::all() {
        text.push_str(&format!("\tmap {} {{\n\t}}\n", m.name()));
    }
    for (c, rules) in &chains {
        text.push_str(&format!("\tchain {c} {{\n"));
        for r in rules {
            text.push_str(&format!("\t\t{r}\n"));
        }
        text.push_str("\t}\n");
    }
    text.push_str("}\n");
    let e = st.expected();
    assert_eq!(e.check(&parse_listing(&text)), Ok(()));
    let flushed = text.replace("\t\tjump services\n", "");
    assert!(e.check(&parse_listing(&flushed)).is_err());
    let no_set = text.replace("\tmap vips {\n\t}\n", "");
    assert!(e.check(&parse_listing(&no_set)).is_err());
}
