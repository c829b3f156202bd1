//! Golden tests: `render` output for fixture directories, compared byte for
//! byte with tests/golden/*.txt. Regenerate with UPDATE_GOLDEN=1 and review the diff.

use clap::Parser;
use kube_proxy_rs::cli::Cli;
use std::path::Path;

fn check(name: &str, args: &[&str]) {
    check_text(name, &render(args));
}

/// What `render` prints for these arguments, with its problems appended.
fn render(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cli =
        Cli::try_parse_from(std::iter::once("kube-proxy-rs").chain(args.iter().copied())).unwrap();
    let s = cli.flags.settings().unwrap();
    let kube_proxy_rs::source::SourceSpec::Dir(dir) = &s.source else {
        panic!()
    };
    let local_ips = ["192.168.10.5".parse().unwrap(), "10.0.0.5".parse().unwrap()];
    let (mut text, problems) =
        kube_proxy_rs::run::render_text(&s, &root.join(dir), &local_ips, &local_ips);
    for p in problems {
        let p = p.replace(&format!("{}/", root.display()), "");
        text.push_str(&format!("# {p}\n"));
    }
    text
}

fn check_text(name: &str, text: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let golden = root.join("tests/golden").join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    if want != text {
        let first = want.lines().zip(text.lines()).position(|(a, b)| a != b);
        panic!(
            "{name}: render output differs from {} (first differing line {:?}); run with UPDATE_GOLDEN=1 and review.\n--- got ---\n{text}",
            golden.display(),
            first.map(|i| i + 1)
        );
    }
}

#[test]
fn golden_all_features_cluster_cidr() {
    check(
        "all-features",
        &[
            "--source",
            "dir:tests/fixtures/golden",
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/48",
        ],
    );
}

#[test]
fn golden_masquerade_all_nodeport_addresses() {
    check(
        "masquerade-all",
        &[
            "--source",
            "dir:tests/fixtures/golden",
            "--hostname-override",
            "node-a",
            "--masquerade-all",
            "--nodeport-addresses",
            "192.168.10.0/24",
            "--ip-families",
            "ipv4",
            "--iptables-localhost-nodeports=false",
        ],
    );
}

#[test]
fn golden_hostile_input() {
    check(
        "hostile",
        &[
            "--source",
            "dir:tests/fixtures/hostile",
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16",
        ],
    );
}

#[test]
fn golden_ipvs_mode() {
    check(
        "ipvs",
        &[
            "--proxy-mode",
            "ipvs",
            "--source",
            "dir:tests/fixtures/golden",
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/48",
        ],
    );
}

/// Large cluster mode: the golden scenario plus a Service with 1,000 IPv4
/// endpoints, so IPv4 has more than 1,000 and its per-endpoint rules (KUBE-SEP
/// chains, KUBE-SVC/KUBE-SVL jumps to them) print without comments; IPv6 stays
/// below and keeps them. The bulk Service's own lines are left out of the
/// golden file (compare it with all-features.txt to see what changed).
#[test]
fn golden_large_cluster_mode() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("tests/fixtures/golden/objects.yaml"),
        tmp.path().join("objects.yaml"),
    )
    .unwrap();
    let mut bulk = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: many, namespace: bulk}\n\
         spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}]}\n",
    );
    for s in 0..2 {
        bulk.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: many-{s}, namespace: bulk, labels: {{kubernetes.io/service-name: many}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        ));
        for e in 0..500 {
            bulk.push_str(&format!(
                "- {{addresses: [10.250.{}.{}], nodeName: node-b}}\n",
                s * 2 + e / 250,
                e % 250 + 1
            ));
        }
    }
    std::fs::write(tmp.path().join("bulk.yaml"), bulk).unwrap();
    let dir = format!("dir:{}", tmp.path().display());
    let text = render(&[
        "--source",
        &dir,
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/16,fd00:244::/48",
    ]);

    // The bulk Service's chains: its KUBE-SVC chain and the KUBE-SEP chains
    // whose rules name its endpoints.
    let mut bulk_chains: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SEP-") && l.contains(" 10.250."))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    bulk_chains.sort();
    bulk_chains.dedup();
    assert_eq!(bulk_chains.len(), 1000);
    let svc = text
        .lines()
        .find(|l| l.starts_with("-A KUBE-SERVICES ") && l.contains("\"bulk/many:http cluster IP\""))
        .and_then(|l| l.split(" -j ").nth(1))
        .unwrap();
    let bulk_rules = text.lines().filter(|l| {
        (l.starts_with(&format!("-A {svc} ")) && l.contains(" -j KUBE-SEP-"))
            || (l.starts_with("-A KUBE-SEP-") && l.contains(" 10.250."))
    });
    let mut n = 0;
    for l in bulk_rules {
        assert!(
            !l.contains("comment"),
            "per-endpoint rule with a comment: {l}"
        );
        n += 1;
    }
    assert_eq!(n, 1000 * 3);
    let kept: String = text
        .lines()
        .filter(|l| {
            !l.contains("bulk/")
                && !l.contains(svc)
                && bulk_chains.binary_search(&chain_of(l)).is_err()
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let kept = kept.replace(&tmp.path().display().to_string(), "DIR");
    check_text("large-cluster", &kept);
}

/// The chain a `:NAME` or `-A NAME` line is about.
fn chain_of(line: &str) -> &str {
    if let Some(decl) = line.strip_prefix(':') {
        decl.split(' ').next().unwrap()
    } else if let Some(rule) = line.strip_prefix("-A ") {
        rule.split(' ').next().unwrap()
    } else {
        ""
    }
}

#[test]
fn golden_nftables() {
    check(
        "nftables",
        &[
            "--proxy-mode",
            "nftables",
            "--source",
            "dir:tests/fixtures/golden",
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/48",
        ],
    );
}

#[test]
fn golden_nftables_hostile() {
    check(
        "nftables-hostile",
        &[
            "--proxy-mode",
            "nftables",
            "--source",
            "dir:tests/fixtures/hostile",
            "--hostname-override",
            "node-a",
            "--masquerade-all",
        ],
    );
}

/// Claims on the same VIP tuple: every mode programs only the winners
/// (model::ownership), and the refused claims are listed as warnings.
#[test]
fn golden_vip_conflicts_every_mode() {
    for (name, mode, allow) in [
        ("vip-conflicts", "iptables", false),
        ("vip-conflicts-ipvs", "ipvs", false),
        ("vip-conflicts-nftables", "nftables", false),
        ("vip-conflicts-allow-node-ip", "iptables", true),
    ] {
        let mut args = vec![
            "--proxy-mode",
            mode,
            "--source",
            "dir:tests/fixtures/vip-conflicts",
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--ip-families",
            "ipv4",
        ];
        if allow {
            args.push("--allow-node-ip-external-ips");
        }
        check(name, &args);
    }
}
