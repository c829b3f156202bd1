//! The desired IPVS state kept incrementally: each service port's
//! contribution, with reference counts for what several ports can share (a
//! VIP, an ipset entry, a virtual server). A change to one service port
//! touches only its own objects, so a sync costs O(change), not O(cluster).

use super::desired::{contribution, Contribution, IpvsConfig};
use super::ipset::{SetEntries, SetKind};
use super::iptables_rules::OutFilter;
use super::wire::{Destination, ServiceId, VirtualServer};
use crate::model::{Family, ServicePort, ServicePortKey};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// What a call to [`Aggregate::set`] may have changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<ServiceId>,
    pub addresses: BTreeSet<IpAddr>,
    pub entries: BTreeSet<Entry>,
    pub out_filter: bool,
}

impl Touched {
    pub fn merge(&mut self, o: Touched) {
        self.services.extend(o.services);
        self.addresses.extend(o.addresses);
        self.entries.extend(o.entries);
        self.out_filter |= o.out_filter;
    }
}

/// An ipset entry of one family's set.
pub type Entry = (Family, SetKind, String);

/// All contributions, and who provides each shared object.
#[derive(Debug, Default)]
pub struct Aggregate {
    by_key: HashMap<ServicePortKey, Contribution>,
    /// Providers of each virtual server; the smallest key wins when two
    /// service ports claim the same VIP:port (a conflict), so the winner does
    /// not change when either is updated.
    providers: HashMap<ServiceId, BTreeSet<ServicePortKey>>,
    addresses: HashMap<IpAddr, usize>,
    entries: HashMap<Entry, usize>,
    per_set: BTreeMap<(Family, SetKind), usize>,
    out_filter: BTreeMap<(IpAddr, &'static str, u16), usize>,
}

fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = m.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            m.remove(k);
        }
    }
}

impl Aggregate {
    pub fn clear(&mut self) {
        *self = Aggregate::default();
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Replaces the contribution of `key` (None: the port is gone).
    pub fn set(
        &mut self,
        key: &ServicePortKey,
        sp: Option<&ServicePort>,
        cfg: &IpvsConfig,
    ) -> Touched {
        let mut t = Touched::default();
        if let Some(old) = self.by_key.remove(key) {
            for (vs, _) in &old.services {
                t.services.insert(vs.id.clone());
                if let Some(p) = self.providers.get_mut(&vs.id) {
                    p.remove(key);
                    if p.is_empty() {
                        self.providers.remove(&vs.id);
                    }
                }
            }
            for a in &old.addresses {
                t.addresses.insert(*a);
                dec(&mut self.addresses, a);
            }
            for (k, v) in old.entries {
                let e = (key.family, k, v);
                dec(&mut self.entries, &e);
                if let Some(n) = self.per_set.get_mut(&(key.family, k)) {
                    *n -= 1;
                }
                t.entries.insert(e);
            }
            for o in old.out_filter {
                t.out_filter = true;
                if let Some(n) = self.out_filter.get_mut(&o) {
                    *n -= 1;
                    if *n == 0 {
                        self.out_filter.remove(&o);
                    }
                }
            }
        }
        let Some(sp) = sp else { return t };
        let c = contribution(sp, cfg);
        for (vs, _) in &c.services {
            t.services.insert(vs.id.clone());
            self.providers
                .entry(vs.id.clone())
                .or_default()
                .insert(key.clone());
        }
        for a in &c.addresses {
            t.addresses.insert(*a);
            *self.addresses.entry(*a).or_default() += 1;
        }
        for (k, v) in &c.entries {
            let e = (key.family, *k, v.clone());
            *self.entries.entry(e.clone()).or_default() += 1;
            *self.per_set.entry((key.family, *k)).or_default() += 1;
            t.entries.insert(e);
        }
        for o in &c.out_filter {
            t.out_filter = true;
            *self.out_filter.entry(*o).or_default() += 1;
        }
        self.by_key.insert(key.clone(), c);
        t
    }

    /// The wanted virtual server and real servers for `id`, if any port wants it.
    pub fn service(&self, id: &ServiceId) -> Option<&(VirtualServer, BTreeSet<Destination>)> {
        let key = self.providers.get(id)?.iter().next()?;
        self.by_key
            .get(key)?
            .services
            .iter()
            .find(|(v, _)| v.id == *id)
    }

    pub fn service_ids(&self) -> impl Iterator<Item = &ServiceId> {
        self.providers.keys()
    }

    pub fn wants_address(&self, ip: &IpAddr) -> bool {
        self.addresses.contains_key(ip)
    }

    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.addresses.keys().copied().collect()
    }

    pub fn wants_entry(&self, e: &Entry) -> bool {
        self.entries.contains_key(e)
    }

    /// Every wanted ipset entry of a family, KUBE-IPVS-IPS included.
    pub fn entries(&self, family: Family) -> SetEntries {
        let mut out = SetEntries::new();
        for (f, k, e) in self.entries.keys() {
            if *f == family {
                out.entry(*k).or_default().insert(e.clone());
            }
        }
        let ips: BTreeSet<String> = self
            .addresses
            .keys()
            .filter(|a| Family::of(a) == family)
            .map(|a| a.to_string())
            .collect();
        if !ips.is_empty() {
            out.insert(SetKind::IpvsIps, ips);
        }
        out
    }

    /// Sets of a family with at least one entry.
    pub fn nonempty(&self, family: Family) -> BTreeSet<SetKind> {
        let mut s: BTreeSet<SetKind> = self
            .per_set
            .iter()
            .filter(|((f, _), n)| *f == family && **n > 0)
            .map(|((_, k), _)| *k)
            .collect();
        if self.addresses.keys().any(|a| Family::of(a) == family) {
            s.insert(SetKind::IpvsIps);
        }
        s
    }

    pub fn out_filter(&self, family: Family) -> OutFilter {
        self.out_filter
            .keys()
            .filter(|(ip, _, _)| Family::of(ip) == family)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{endpoint, service_port};
    use crate::model::Protocol;
    use std::time::Duration;

    fn cfg() -> IpvsConfig {
        IpvsConfig {
            scheduler: "rr".into(),
            node_ips: vec!["192.168.10.5".parse().unwrap()],
            drain_timeout: Duration::from_secs(30),
            host_addresses: BTreeSet::new(),
            primary_ips: vec![],
        }
    }

    fn port(name: &str, cip: &str, ext: &str) -> ServicePort {
        let mut p = service_port(
            "ns",
            name,
            "",
            Protocol::Tcp,
            cip,
            80,
            vec![endpoint("10.244.1.10", 8080)],
        );
        p.external_ips = vec![ext.parse().unwrap()];
        p.node_port = Some(30080);
        p
    }

    #[test]
    fn shared_objects_stay_until_the_last_user_goes() {
        let (a, b) = (
            port("a", "10.96.0.1", "192.0.2.1"),
            port("b", "10.96.0.2", "192.0.2.1"),
        );
        let mut agg = Aggregate::default();
        agg.set(&a.key, Some(&a), &cfg());
        agg.set(&b.key, Some(&b), &cfg());
        let ext: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(agg.wants_address(&ext));
        assert_eq!(
            agg.entries(Family::V4)[&SetKind::NodePortTcp].len(),
            1,
            "one bitmap port for both"
        );
        let t = agg.set(&a.key, None, &cfg());
        assert!(t.addresses.contains(&ext));
        assert!(agg.wants_address(&ext), "b still binds it");
        assert!(agg.wants_entry(&(Family::V4, SetKind::NodePortTcp, "30080".into())));
        let ext_id = ServiceId {
            addr: ext,
            protocol: Protocol::Tcp,
            port: 80,
        };
        assert_eq!(
            agg.service(&ext_id).unwrap().0.id,
            ext_id,
            "b now provides it"
        );
        let t = agg.set(&b.key, None, &cfg());
        assert!(t.services.contains(&ext_id));
        assert!(agg.service(&ext_id).is_none());
        assert!(agg.is_empty());
        assert!(agg.entries(Family::V4).is_empty());
        assert!(agg.nonempty(Family::V4).is_empty());
    }

    #[test]
    fn touched_covers_old_and_new() {
        let mut agg = Aggregate::default();
        let a = port("a", "10.96.0.1", "192.0.2.1");
        agg.set(&a.key, Some(&a), &cfg());
        let mut moved = a.clone();
        moved.external_ips = vec!["192.0.2.9".parse().unwrap()];
        let t = agg.set(&a.key, Some(&moved), &cfg());
        let addrs: Vec<String> = t.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, vec!["10.96.0.1", "192.0.2.1", "192.0.2.9"]);
        assert!(!agg.wants_address(&"192.0.2.1".parse().unwrap()));
        assert_eq!(agg.entries(Family::V4)[&SetKind::IpvsIps].len(), 2);
        assert!(agg.entries(Family::V6).is_empty());
    }
}
