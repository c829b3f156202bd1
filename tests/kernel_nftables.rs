//! The nftables backend on the host kernel, with real TCP/UDP traffic between
//! network namespaces: the same scenarios as iptables mode, then what only
//! this mode has to prove (changes as element updates, source ranges,
//! takeover from iptables mode, cleanup). Needs root; skips with a printed
//! reason otherwise.

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(15);
const NFT: [&str; 2] = ["--proxy-mode", "nftables"];

/// `nft list table <family> <table>` in the node, or "" when it is not there.
fn nft_list(lab: &Lab, family: &str, table: &str) -> String {
    let out = lab.in_ns(&lab.node, &["nft", "list", "table", family, table]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_required() -> bool {
    if run(&["sh", "-c", "command -v nft"]).status.code() != Some(0) {
        support::skip("nft not installed (run scripts/setup.sh)");
        return false;
    }
    true
}

#[test]
fn traffic_reaches_pods_through_every_kind_of_vip() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    scenarios::every_kind_of_vip(&NFT);
}

#[test]
fn dual_stack_programs_both_families() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    scenarios::dual_stack(&NFT, |lab| {
        let t = nft_list(lab, "ip6", "kube-proxy-rs");
        assert!(t.contains("fd00:244:1::10 . 8080"), "{t}");
    });
}

#[test]
fn policies_and_endpoint_conditions() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    scenarios::policies(&NFT);
}

#[test]
fn no_service_takes_another_services_vip_and_a_freed_claim_moves() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    scenarios::vip_ownership(&NFT);
}

#[test]
fn an_external_ip_on_a_node_address_is_refused() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    scenarios::node_address_external_ip(&NFT, false);
}

#[test]
fn endpoint_changes_are_programmed_without_touching_chains() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    let mut lab = Lab::new();
    pods3(&mut lab);
    let web = |eps: &[(&str, &str)]| {
        service(
            "web",
            "{clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}",
        ) + &slice("web-1", "web", "[{port: 8080}]", eps)
    };
    lab.write("web.yaml", &web(&LOCAL3[..1]));
    lab.start_proxy(&NFT);
    let node = lab.node.clone();
    wait_until("one pod answers", WAIT, || {
        curl(&node, "http://10.96.0.10/", 1).is_ok()
    });
    assert_eq!(spread(&node, "http://10.96.0.10/", 10).len(), 1);
    let chains_before: Vec<String> = nft_list(&lab, "ip", "kube-proxy-rs")
        .lines()
        .filter(|l| l.trim_start().starts_with("chain "))
        .map(str::to_string)
        .collect();
    // Three endpoints: one more dispatch chain (c3), the rest elements.
    lab.write("web.yaml", &web(&LOCAL3));
    wait_until("all three pods answer", WAIT, || {
        spread(&node, "http://10.96.0.10/", 30).len() == 3
    });
    // Swap one endpoint for another: elements only.
    lab.write("web.yaml", &web(&[LOCAL3[0], LOCAL3[2]]));
    wait_until("pod1 gone", WAIT, || {
        let hits = spread(&node, "http://10.96.0.10/", 30);
        hits.len() == 2 && !hits.contains_key("pod1:8080")
    });
    // The same count, another endpoint: element updates only.
    lab.write("web.yaml", &web(&[LOCAL3[0], LOCAL3[1]]));
    wait_until("pod2 gone", WAIT, || {
        let hits = spread(&node, "http://10.96.0.10/", 30);
        hits.len() == 2 && !hits.contains_key("pod2:8080")
    });
    let t = nft_list(&lab, "ip", "kube-proxy-rs");
    let chains_after: Vec<String> = t
        .lines()
        .filter(|l| l.trim_start().starts_with("chain "))
        .map(str::to_string)
        .collect();
    // Only dispatch chains (one per endpoint count: c1, c3, c2) came.
    let fixed = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| {
                let name = l.trim().trim_start_matches("chain ").trim_end_matches(" {");
                !(name.starts_with('c') && name[1..].bytes().all(|b| b.is_ascii_digit()))
            })
            .cloned()
            .collect()
    };
    assert_eq!(fixed(&chains_before), fixed(&chains_after));
    for c in ["c1", "c2", "c3"] {
        assert!(t.contains(&format!("chain {c} {{")), "{c}:\n{t}");
    }
    // Every change after the first sync was incremental, and the swap
    // wrote no chain at all.
    let log = lab.log();
    assert!(!log.contains("sync failed"), "{log}");
    assert_eq!(log.matches("full=true").count(), 1, "{log}");
    let last = log.lines().rev().find(|l| l.contains(" synced ")).unwrap();
    assert!(
        last.contains("full=false") && last.contains("chains_written=0"),
        "{last}"
    );
    // Deleted: the ClusterIP refuses at once (no endpoints left is REJECT;
    // no Service at all is not ours any more and the route decides).
    lab.write(
        "web.yaml",
        &service(
            "web",
            "{clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}",
        ),
    );
    wait_until("no endpoints: refused", WAIT, || {
        curl(&node, "http://10.96.0.10/", 2) == Err(7)
    });
    lab.remove("web.yaml");
    wait_until("the service's elements are gone", WAIT, || {
        !nft_list(&lab, "ip", "kube-proxy-rs").contains("10.96.0.10")
    });
    assert!(lab.proxy_running());
}

#[test]
fn load_balancer_source_ranges_let_only_those_sources_in() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    let mut lab = Lab::new();
    pods3(&mut lab);
    let lb = |name: &str, cip: &str, lbip: &str, ranges: &str| {
        service(
            name,
            &format!("{{type: LoadBalancer, clusterIP: {cip}, loadBalancerSourceRanges: [{ranges}], ports: [{{port: 80, targetPort: 8080}}]}}"),
        )
        .replace(
            "\n---\n",
            &format!("\nstatus: {{loadBalancer: {{ingress: [{{ip: {lbip}}}]}}}}\n---\n"),
        ) + &slice(&format!("{name}-1"), name, "[{port: 8080}]", &LOCAL3)
    };
    lab.write(
        "lb.yaml",
        &(lb("open", "10.96.0.70", "198.51.100.70", "192.168.10.0/24")
            + &lb("closed", "10.96.0.71", "198.51.100.71", "10.0.0.0/8")),
    );
    lab.start_proxy(&NFT);
    let client = lab.client.clone();
    wait_until("allowed source answered", WAIT, || {
        curl(&client, "http://198.51.100.70/", 1).is_ok()
    });
    at_least_each(
        &spread(&client, "http://198.51.100.70/", 30),
        &["pod0:8080", "pod1:8080", "pod2:8080"],
        1,
    );
    // Not in the ranges: dropped (a timeout, not a refusal).
    assert_eq!(curl(&client, "http://198.51.100.71/", 2), Err(28));
    // The ClusterIP of the closed one still answers from the node.
    assert!(curl(&lab.node, "http://10.96.0.71/", 2).is_ok());
}

#[test]
fn takes_over_from_iptables_mode_without_a_gap_and_removes_its_chains() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    scenarios::switch_modes(&[], &NFT, |lab| {
        !lab.save(false, "nat").contains("KUBE-SERVICES")
    });
}

#[test]
fn iptables_mode_takes_the_node_back_and_removes_the_tables() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    let lab = scenarios::switch_modes(&NFT, &[], |lab| {
        nft_list(lab, "ip", "kube-proxy-rs").is_empty()
            && nft_list(lab, "ip6", "kube-proxy-rs").is_empty()
    });
    assert!(lab.save(false, "nat").contains("KUBE-SERVICES"));
}

#[test]
fn takes_over_from_upstream_nftables_mode_and_removes_its_table() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    let mut lab = Lab::new();
    pods3(&mut lab);
    // What upstream's nftables mode would have programmed for this Service,
    // reduced to its effect: the ClusterIP DNATed to pod0, in its own table.
    let upstream = "add table ip kube-proxy\n\
        add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat; policy accept; }\n\
        add chain ip kube-proxy nat-output { type nat hook output priority -100; policy accept; }\n\
        add rule ip kube-proxy nat-prerouting ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.10:8080\n\
        add rule ip kube-proxy nat-output ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.10:8080\n";
    let file = lab.dir.path().join("upstream.nft");
    std::fs::write(&file, upstream).unwrap();
    let node = lab.node.clone();
    let out = lab.in_ns(&node, &["nft", "-f", &path_str(&file)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        spread(&node, "http://10.96.0.10/", 5).get("pod0:8080"),
        Some(&5)
    );
    lab.write(
        "web.yaml",
        &(service(
            "web",
            "{clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}",
        ) + &slice("web-1", "web", "[{port: 8080}]", &LOCAL3)),
    );
    // Requests all along: first answered by upstream's rules, then by ours.
    let prober = scenarios::probe(&node, "http://10.96.0.10/", 8);
    std::thread::sleep(Duration::from_secs(1));
    lab.start_proxy(&NFT);
    wait_until("upstream's table removed", WAIT, || {
        nft_list(&lab, "ip", "kube-proxy").is_empty()
    });
    let (ok, failed) = prober.join().unwrap();
    eprintln!("ClusterIP through the takeover: {ok} answered, {failed} failed");
    assert_eq!(failed, 0);
    at_least_each(
        &spread(&node, "http://10.96.0.10/", 30),
        &["pod0:8080", "pod1:8080", "pod2:8080"],
        1,
    );
}

#[test]
fn cleanup_removes_the_tables() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    let mut lab = Lab::new();
    pods3(&mut lab);
    lab.write(
        "web.yaml",
        &(service(
            "web",
            "{clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}",
        ) + &slice("web-1", "web", "[{port: 8080}]", &LOCAL3)),
    );
    lab.start_proxy(&NFT);
    let node = lab.node.clone();
    wait_until("answers", WAIT, || {
        curl(&node, "http://10.96.0.10/", 1).is_ok()
    });
    lab.stop_proxy(false);
    assert!(nft_list(&lab, "ip", "kube-proxy-rs").contains("chain services"));
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    let out = lab.in_ns(&node, &[bin, "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(nft_list(&lab, "ip", "kube-proxy-rs"), "");
    assert_eq!(nft_list(&lab, "ip6", "kube-proxy-rs"), "");
}

#[test]
fn rendered_rulesets_are_accepted_by_nft() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    let ns = netns::Netns::new();
    let bin = env!("CARGO_BIN_EXE_kube-proxy-rs");
    for fixture in ["golden", "hostile"] {
        let src = format!(
            "dir:{}",
            root().join("tests/fixtures").join(fixture).display()
        );
        for extra in [
            &[][..],
            &[
                "--masquerade-all",
                "--nodeport-addresses",
                "192.168.10.0/24",
            ][..],
        ] {
            let mut args = vec![
                bin,
                "render",
                "--proxy-mode",
                "nftables",
                "--source",
                &src,
                "--node",
                NODE_NAME,
                "--cluster-cidr",
                "10.244.0.0/16,fd00:244::/48",
            ];
            args.extend_from_slice(extra);
            let out = run(&args);
            assert!(out.status.success());
            let file = std::env::temp_dir().join(format!("{}-{fixture}.nft", ns.name()));
            std::fs::write(&file, &out.stdout).unwrap();
            // Loaded for real (not only checked), twice: a full sync over an
            // existing table must work too.
            for _ in 0..2 {
                let out = run(&[
                    "ip",
                    "netns",
                    "exec",
                    ns.name(),
                    "nft",
                    "-f",
                    &path_str(&file),
                ]);
                assert!(
                    out.status.success(),
                    "{fixture} {extra:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let _ = std::fs::remove_file(file);
        }
    }
}

#[test]
fn stale_udp_conntrack_entries_are_flushed() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    if run(&["sh", "-c", "command -v conntrack"]).status.code() != Some(0) {
        skip("conntrack tool not installed (run scripts/setup.sh)");
        return;
    }
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[5353]);
    lab.add_pod("pod1", 11, &[8080], &[5353]);
    let dns = |ep: &str| {
        service(
            "dns",
            "{clusterIP: 10.96.0.53, ports: [{port: 53, protocol: UDP}]}",
        ) + &slice(
            "dns-1",
            "dns",
            "[{port: 5353, protocol: UDP}]",
            &[(ep, NODE_NAME)],
        )
    };
    lab.write("dns.yaml", &dns("10.244.1.10"));
    lab.start_proxy(&NFT);
    let query = |lab: &Lab| scenarios::udp_from_port(lab, "10.96.0.53", 53, 40000);
    // One endpoint over UDP: the dispatch chain c1 must DNAT UDP too.
    wait_until("UDP service answers", WAIT, || query(&lab) == "pod0:5353");
    // The same flow (source port 40000) is tracked to pod0; moving the
    // endpoint must not leave it there.
    lab.write("dns.yaml", &dns("10.244.1.11"));
    wait_until("pod0 gone from the map", WAIT, || {
        !nft_list(&lab, "ip", "kube-proxy-rs").contains("10.244.1.10 . 5353")
    });
    wait_until(
        "same UDP flow now answered by pod1",
        Duration::from_secs(5),
        || query(&lab) == "pod1:5353",
    );
}

#[test]
fn an_affinity_services_old_chains_and_sets_are_retired_a_sync_later() {
    require_kernel!();
    if !nft_required() {
        return;
    }
    let mut lab = Lab::new();
    pods3(&mut lab);
    let sticky = |eps: &[(&str, &str)]| {
        service(
            "sticky",
            "{clusterIP: 10.96.0.30, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 8080}]}",
        ) + &slice("sticky-1", "sticky", "[{port: 8080}]", eps)
    };
    lab.write("sticky.yaml", &sticky(&LOCAL3));
    lab.start_proxy(&NFT);
    let node = lab.node.clone();
    wait_until("sticky answers", WAIT, || {
        curl(&node, "http://10.96.0.30/", 1).is_ok()
    });
    let chains = |lab: &Lab| -> Vec<String> {
        nft_list(lab, "ip", "kube-proxy-rs")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("chain affinity-ep-"))
            .map(|l| l.trim_end_matches(" {").to_string())
            .collect()
    };
    assert_eq!(chains(&lab).len(), 3);
    // pod2 leaves: its chain and set are emptied, then deleted a sync later.
    lab.write("sticky.yaml", &sticky(&LOCAL3[..2]));
    wait_until("two endpoint chains left", WAIT, || chains(&lab).len() == 2);
    let t = nft_list(&lab, "ip", "kube-proxy-rs");
    assert_eq!(t.matches("set affinity-ep-").count(), 2, "{t}");
    let hits = spread(&node, "http://10.96.0.30/", 10);
    assert_eq!(hits.len(), 1, "still sticky: {hits:?}");
    assert!(!hits.contains_key("pod2:8080"), "{hits:?}");
    // The Service goes: everything of it goes.
    lab.remove("sticky.yaml");
    wait_until("no affinity chain or set left", WAIT, || {
        !nft_list(&lab, "ip", "kube-proxy-rs").contains("affinity-")
    });
    let log = lab.log();
    assert!(!log.contains("sync failed"), "{log}");
}
