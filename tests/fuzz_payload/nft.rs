//! The nftables ruleset of the same inputs: every line one of the commands
//! the backend writes, every rule one of the fixed layout's or of the known
//! dispatch and affinity shapes, every element made only of addresses,
//! numbers, protocol names and known verdicts, every VIP one a Service
//! validly asked for and every DNAT target a valid endpoint; and, as root,
//! the script is loaded for real by `nft -f` (twice: a full sync over an
//! existing table) in a throwaway namespace.

use super::*;
use kube_proxy_rs::nftables::layout::{fixed_chains, MapId, NftConfig, Pick};

fn is_hash_name(s: &str) -> bool {
    s.len() == 12
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// A chain or set name the backend may create.
fn known_name(name: &str, fixed: &[&str]) -> bool {
    fixed.contains(&name)
        || Pick::parse_chain(name).is_some()
        || ["affinity-c-", "affinity-l-", "affinity-ep-"]
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(is_hash_name))
}

fn addr_of_family(tok: &str, family: Family) -> Option<IpAddr> {
    let ip = parse_addr(tok.trim_start_matches('[').trim_end_matches(']'))?;
    (Family::of(&ip) == family).then_some(ip)
}

/// One element item, `k1 . k2 . k3[ : v1 . v2]`: every token of a known kind.
fn check_item(
    item: &str,
    map: &str,
    family: Family,
    fixed: &[&str],
    a: &Allowed,
) -> Result<(), TestCaseError> {
    let (key, value) = match item.split_once(" : ") {
        Some((k, v)) => (k, Some(v)),
        None => (item, None),
    };
    let toks: Vec<&str> = key.split(" . ").collect();
    for t in &toks {
        let ok = addr_of_family(t, family).is_some()
            || t.parse::<u32>().is_ok()
            || ["tcp", "udp", "sctp"].contains(t)
            || (t.contains('/') && addr_of_family(t.split('/').next().unwrap(), family).is_some());
        prop_assert!(ok, "{map}: unknown key token {t:?} in {item:?}");
    }
    let vip_maps = [
        MapId::Vips,
        MapId::ClusterGroups,
        MapId::LocalGroups,
        MapId::ClusterEps,
        MapId::LocalEps,
        MapId::FirewallVips,
        MapId::FirewallAllow,
        MapId::NoEndpointInternal,
        MapId::NoEndpointExternal,
    ]
    .map(|m| m.name());
    if vip_maps.contains(&map) {
        let ip = addr_of_family(toks[0], family).unwrap();
        prop_assert!(
            a.vips.values().any(|v| v.contains(&ip)),
            "{map}: {ip} is no VIP any Service validly asked for ({item:?})"
        );
    }
    if let Some(v) = value {
        if let Some(target) = v.strip_prefix("goto ") {
            prop_assert!(known_name(target, fixed), "{map}: goto {target:?}");
        } else if v != "drop" {
            let parts: Vec<&str> = v.split(" . ").collect();
            prop_assert!(parts.len() == 2, "{map}: value {v:?}");
            let ip = addr_of_family(parts[0], family);
            prop_assert!(
                ip.is_some_and(|ip| a.endpoint_ips.contains(&ip)),
                "{map}: DNAT target {v:?} is no valid endpoint"
            );
            prop_assert!(
                parts[1].parse::<u16>().is_ok_and(|p| p > 0),
                "{map}: port {v:?}"
            );
        }
    }
    Ok(())
}

/// Checks one family's script (see the module comment).
pub(crate) fn check_nft(script: &str, cfg: &NftConfig, a: &Allowed) -> Result<(), TestCaseError> {
    let family = cfg.family();
    let t = format!("{} kube-proxy-rs", cfg.nf());
    let chains = fixed_chains(cfg);
    let mut fixed: Vec<&str> = chains.iter().map(|c| c.name).collect();
    fixed.extend(MapId::ALL.iter().map(|m| m.name()));
    let fixed_rules: BTreeSet<String> = chains
        .iter()
        .flat_map(|c| c.rules.iter().map(move |r| format!("{} {r}", c.name)))
        .collect();
    for line in script.lines() {
        prop_assert!(
            line.chars().all(|c| c.is_ascii() && !c.is_ascii_control()),
            "non-printable nft line {line:?}"
        );
        for long in &a.long {
            prop_assert!(!line.contains(long.as_str()), "input string in nft line");
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((verb, rest)) = [
            "add table ",
            "add set ",
            "add map ",
            "add chain ",
            "add rule ",
            "add element ",
            "flush set ",
            "flush map ",
            "flush chain ",
            "delete element ",
            "delete chain ",
            "delete set ",
            "delete table ",
        ]
        .iter()
        .find_map(|v| line.strip_prefix(v).map(|r| (*v, r))) else {
            prop_assert!(false, "unknown nft command {line:?}");
            unreachable!()
        };
        let Some(rest) = rest.strip_prefix(&t) else {
            prop_assert!(false, "not our table: {line:?}");
            unreachable!()
        };
        let rest = rest.trim_start();
        if verb == "add table " || verb == "delete table " {
            prop_assert!(rest.is_empty(), "{line:?}");
            continue;
        }
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        prop_assert!(
            known_name(name, &fixed),
            "unknown name {name:?} in {line:?}"
        );
        match verb {
            "add rule " => {
                let rule = format!("{name} {tail}");
                if fixed_rules.contains(&rule) {
                    continue;
                }
                if let Some((pick, n)) = Pick::parse_chain(name) {
                    prop_assert!(tail == pick.rule(cfg.nf(), n), "dispatch rule {line:?}");
                    continue;
                }
                // Affinity: `<nf> saddr @X goto X`, the random pick, or an
                // endpoint's `update @X { <nf> saddr } meta l4proto P dnat <nf> to ADDR`.
                let ok = if let Some(r) = tail.strip_prefix(&format!("{} saddr @", cfg.nf())) {
                    r.split_once(" goto ")
                        .is_some_and(|(s, c)| s == c && known_name(c, &fixed))
                } else if let Some(r) = tail.strip_prefix("numgen random mod ") {
                    r.split([' ', ',']).all(|w| {
                        w.is_empty()
                            || w.parse::<u32>().is_ok()
                            || ["vmap", "{", "}", ":", "goto"].contains(&w)
                            || known_name(w, &fixed)
                    })
                } else if let Some(r) = tail.strip_prefix("update @") {
                    let dst = r.rsplit(" to ").next().unwrap_or("");
                    let ip = addr_of_family(dst.rsplit_once(':').map_or(dst, |(h, _)| h), family);
                    ip.is_some_and(|ip| a.endpoint_ips.contains(&ip))
                } else {
                    false
                };
                prop_assert!(ok, "unexpected rule {line:?}");
            }
            "add element " | "delete element " => {
                let body = tail
                    .strip_prefix("{ ")
                    .and_then(|b| b.strip_suffix(" }"))
                    .unwrap_or_else(|| panic!("element braces: {line:?}"));
                for item in body.split(", ") {
                    check_item(item, name, family, &fixed, a)?;
                }
            }
            _ => {
                // Declarations: only the fixed definitions' words.
                for w in tail.split(|c: char| " {};.:".contains(c)) {
                    prop_assert!(
                        w.is_empty()
                            || w.bytes().all(|b| b.is_ascii_lowercase()
                                || b.is_ascii_digit()
                                || b == b'_'
                                || b == b','
                                || b == b'-')
                            || w == "dstnat"
                            || w == "srcnat",
                        "unexpected word {w:?} in {line:?}"
                    );
                }
            }
        }
    }
    Ok(())
}

/// `nft -f` of the script, twice, in `ns`.
pub(crate) fn nft_load(ns: &Netns, script: &str) -> Result<(), TestCaseError> {
    for pass in 0..2 {
        let out = ns.pipe(&["nft", "-f", "-"], script);
        prop_assert!(
            out.status.success(),
            "nft -f rejected the script (pass {pass}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    NFT_LOADED.fetch_add(1, Relaxed);
    Ok(())
}
