//! Golden tests: `render` output for fixture directories, compared byte for
//! byte with tests/golden/*.txt. Regenerate with UPDATE_GOLDEN=1 and review the diff.

use clap::Parser;
use kube_proxy_rs::cli::Cli;
use std::path::Path;

fn check(name: &str, args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cli =
        Cli::try_parse_from(std::iter::once("kube-proxy-rs").chain(args.iter().copied())).unwrap();
    let s = cli.flags.settings().unwrap();
    let kube_proxy_rs::source::SourceSpec::Dir(dir) = &s.source else {
        panic!()
    };
    let local_ips = ["192.168.10.5".parse().unwrap(), "10.0.0.5".parse().unwrap()];
    let (mut text, problems) = kube_proxy_rs::run::render_text(&s, &root.join(dir), &local_ips);
    for p in problems {
        let p = p.replace(&format!("{}/", root.display()), "");
        text.push_str(&format!("# {p}\n"));
    }
    let golden = root.join("tests/golden").join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
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
