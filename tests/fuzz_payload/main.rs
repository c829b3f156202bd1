//! Property-based fuzzing of the object -> model -> iptables payload path
//! (issue #6 item 4).
//!
//! Generates Services and EndpointSlices mixing valid and hostile values
//! (names with newlines and quotes, `-j ACCEPT` fragments, overlong and
//! unicode strings, out-of-range ports, bad and wrong-family IPs, duplicate
//! endpoints, every Service type and traffic policy) and feeds them through
//! the real pipeline twice:
//!
//! * the daemon's path: `source::Store` -> `sync::model::ModelCache` ->
//!   `iptables::state::render_full` (the engine's own payload) for each `iptables::backend::render_configs` config;
//! * the `render` command's path: the objects written as YAML into a tempdir
//!   and read back by `run::render_text`, whose payload lines must equal the
//!   daemon path's.
//!
//! Properties: (a) nothing panics; (b) every payload line is a table header,
//! a chain declaration, an `-A` rule built from known options, `COMMIT` or a
//! comment line, all printable ASCII, every `--comment` value within the
//! validated charset, and no input string longer than 256 chars appears;
//! (c) every chain appended to or jumped to is declared (or built in) and
//! every declared chain is one the model names; (d) DNAT targets are valid
//! endpoints of the Service named in the rule, `-d` addresses are that
//! Service's valid clusterIP/externalIP/load-balancer IPs, and every address
//! is of the payload's family; (e) as root, `iptables-restore --noflush
//! --test` (in a throwaway network namespace) accepts the payloads of a second,
//! 40-case run of mostly clean inputs (skipped with a printed reason otherwise).
//!
//! Layout: [`gen`] makes the inputs, [`checks`] holds the properties,
//! this file runs the pipeline; the rule-line reader is `support::rules`.
//!
//! Run with `cargo test --test fuzz_payload -- --show-output` for the summary.
//! PROPTEST_CASES=N / FUZZ_PAYLOAD_RESTORE_CASES=N search deeper.

mod checks;
mod gen;
mod nft;
#[path = "../support/mod.rs"]
mod support;

use checks::*;
use clap::Parser;
use gen::*;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort as KPort,
    ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as KEndpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_proxy_rs::cli::{Cli, Settings};
use kube_proxy_rs::iptables::large::{is_large, total_endpoints};
use kube_proxy_rs::iptables::names::{self, endpoint_chain, ServiceChains};
use kube_proxy_rs::iptables::state::render_full;
use kube_proxy_rs::iptables::RenderConfig;
use kube_proxy_rs::model::{Family, NodeContext, ServicePort};
use kube_proxy_rs::source::{Store, Update};
use kube_proxy_rs::sync::model::ModelCache;
use nft::*;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use support::netns::Netns;
use support::rules::*;

/// Cases for the pure properties (a)-(d).
const CASES: u32 = 256;
/// Cases whose payloads also go through `iptables-restore --test` (e).
const RESTORE_CASES: u32 = 40;

// ---------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------

static INPUTS: AtomicUsize = AtomicUsize::new(0);
static NFT_CHECKED: AtomicUsize = AtomicUsize::new(0);
static NFT_LOADED: AtomicUsize = AtomicUsize::new(0);
static SERVICES: AtomicUsize = AtomicUsize::new(0);
static SLICES: AtomicUsize = AtomicUsize::new(0);
static REJECTED: AtomicUsize = AtomicUsize::new(0);
static WARNINGS: AtomicUsize = AtomicUsize::new(0);
static PORTS: AtomicUsize = AtomicUsize::new(0);
static DNATS: AtomicUsize = AtomicUsize::new(0);
static PAYLOADS: AtomicUsize = AtomicUsize::new(0);
static RESTORED: AtomicUsize = AtomicUsize::new(0);
static RESTORED_RULES: AtomicUsize = AtomicUsize::new(0);

fn settings(k: &Knobs, dir: &std::path::Path) -> Settings {
    let mut args: Vec<String> = s(&["kube-proxy-rs", "--hostname-override", "node-a"]);
    args.push("--source".into());
    args.push(format!("dir:{}", dir.display()));
    for (flag, v) in [
        ("--cluster-cidr", &k.cluster_cidr),
        ("--nodeport-addresses", &k.nodeport_addresses),
        ("--ip-families", &k.ip_families),
    ] {
        if !v.is_empty() {
            args.push(flag.into());
            args.push(v.clone());
        }
    }
    args.push(format!("--masquerade-all={}", k.masquerade_all));
    args.push(format!(
        "--iptables-localhost-nodeports={}",
        k.localhost_nodeports
    ));
    if let Some(n) = &k.service_proxy_name {
        args.push("--service-proxy-name".into());
        args.push(n.clone());
    }
    Cli::try_parse_from(&args)
        .expect("flags parse")
        .flags
        .settings()
        .expect("settings")
}

const LOCAL_IPS: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(192, 168, 10, 5)),
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)),
];

/// What one case produced: iptables payloads per family, nft scripts.
type Rendered = (Vec<(Family, String)>, Vec<String>);

/// Runs both paths and checks (b)-(d) for iptables mode and the nft
/// properties for nftables mode; returns what was rendered.
fn run_case(input: &Input) -> Result<Rendered, TestCaseError> {
    INPUTS.fetch_add(1, Relaxed);
    SERVICES.fetch_add(input.services.len(), Relaxed);
    SLICES.fetch_add(input.slices.len(), Relaxed);
    let a = allowed(input);
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(&input.knobs, tmp.path());
    let configs = kube_proxy_rs::iptables::backend::render_configs(&s, &LOCAL_IPS);

    // Daemon path: Store -> ModelCache -> render_full.
    let mut store = Store::default();
    let mut dirty = store.apply(Update::ReplaceServices(input.services.clone()));
    dirty.extend(store.apply(Update::ReplaceSlices(input.slices.clone())));
    let node = NodeContext {
        node_name: s.node_name.clone(),
        zone: None,
        service_proxy_name: s.service_proxy_name.clone(),
    };
    let mut cache = ModelCache::new(node.clone());
    // The node's own addresses, as the render path below is given them.
    cache.set_node_addresses(LOCAL_IPS.into_iter().collect());
    let rebuild = cache.rebuild(&store, &dirty);
    REJECTED.fetch_add(rebuild.errors.len(), Relaxed);
    WARNINGS.fetch_add(rebuild.warnings.len(), Relaxed);
    PORTS.fetch_add(cache.ports.len(), Relaxed);
    for msg in rebuild.errors.iter().chain(&rebuild.warnings) {
        prop_assert!(!msg.contains('\n'), "multi-line problem message {msg:?}");
    }
    let mut payloads = Vec::new();
    let mut expected_text = String::new();
    for cfg in &configs {
        let fam: Vec<&ServicePort> = cache
            .ports
            .values()
            .filter(|p| p.key.family == cfg.family())
            .collect();
        // (d) reads the Service from each DNAT rule's comment, which large
        // cluster mode (over 1,000 endpoints) leaves out: cases stay below.
        prop_assert!(
            !is_large(total_endpoints(fam.iter().copied())),
            "case too big for the comment checks"
        );
        let payload = render_full(&fam, cfg);
        check_payload(&payload, cfg, &fam, &a)?;
        PAYLOADS.fetch_add(1, Relaxed);
        DNATS.fetch_add(payload.matches("-j DNAT").count(), Relaxed);
        if !(cfg.family() == Family::V6 && fam.is_empty()) {
            expected_text.push_str(&payload);
        }
        payloads.push((cfg.family(), payload));
    }

    // With this node's zone known (topology hints) the same must hold.
    if let Some(zone) = &input.knobs.zone {
        let mut zoned = ModelCache::new(NodeContext {
            zone: Some(zone.clone()),
            ..node
        });
        zoned.set_node_addresses(LOCAL_IPS.into_iter().collect());
        zoned.rebuild(&store, &dirty);
        for cfg in &configs {
            let fam: Vec<&ServicePort> = zoned
                .ports
                .values()
                .filter(|p| p.key.family == cfg.family())
                .collect();
            check_payload(&render_full(&fam, cfg), cfg, &fam, &a)?;
        }
    }

    // `render` path: YAML files -> render_text; same rules, and its extra
    // lines are comments.
    let mut yaml = String::new();
    for doc in input
        .services
        .iter()
        .map(|x| serde_yaml::to_string(x).unwrap())
        .chain(
            input
                .slices
                .iter()
                .map(|x| serde_yaml::to_string(x).unwrap()),
        )
    {
        yaml.push_str("---\n");
        yaml.push_str(&doc);
    }
    std::fs::write(tmp.path().join("objects.yaml"), &yaml).unwrap();
    let (text, problems) = kube_proxy_rs::run::render_text(&s, tmp.path(), &LOCAL_IPS, &LOCAL_IPS);
    let tmp_path = tmp.path().display().to_string();
    let load_errors: Vec<&String> = problems.iter().filter(|p| p.contains(&tmp_path)).collect();
    prop_assert!(
        load_errors.is_empty(),
        "objects did not survive a YAML round trip: {load_errors:?}"
    );
    check_lines(&text, true, &a)?;
    // nftables mode, from the same model.
    let mut scripts = Vec::new();
    for cfg in kube_proxy_rs::nftables::backend::nft_configs(&s, &LOCAL_IPS) {
        let script = kube_proxy_rs::nftables::state::FamilyState::new(cfg.clone())
            .plan_full(&cache.ports, None, false, std::time::Instant::now())
            .script;
        check_nft(&script, &cfg, &a)?;
        NFT_CHECKED.fetch_add(1, Relaxed);
        scripts.push(script);
    }
    let rules: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    prop_assert!(
        rules == expected_text,
        "render_text and ModelCache+render_full disagree\n--- render_text ---\n{rules}\n--- model cache ---\n{expected_text}"
    );
    Ok((payloads, scripts))
}

// ---------------------------------------------------------------------------
// (e) iptables-restore --test in a throwaway network namespace
// ---------------------------------------------------------------------------

fn restore_skip_reason() -> Option<String> {
    support::skip_reason().or_else(|| {
        let ok = Command::new("ip6tables-restore")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let nft = Command::new("nft")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        (!ok)
            .then(|| "ip6tables-restore not available".to_string())
            .or((!nft).then(|| "nft not available".to_string()))
    })
}

fn restore_test(ns: &Netns, family: Family, payload: &str) -> Result<(), TestCaseError> {
    let tool = match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    };
    let out = ns.pipe(&[tool, "--noflush", "--test"], payload);
    RESTORED.fetch_add(1, Relaxed);
    RESTORED_RULES.fetch_add(
        payload.lines().filter(|l| l.starts_with("-A ")).count(),
        Relaxed,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad_line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error occurred at line: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .and_then(|n| payload.lines().nth(n - 1));
    prop_assert!(
        out.status.success(),
        "{tool} --test rejected the payload: {stderr}\n  line: {bad_line:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------

fn config(cases: u32) -> Config {
    Config {
        cases,
        source_file: Some(file!()),
        // A failure is saved next to this file (tests/fuzz_payload.proptest-regressions).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

#[test]
fn fuzz_object_to_payload() {
    // PROPTEST_CASES=N runs a deeper search; FUZZ_PAYLOAD_RESTORE_CASES=N
    // a deeper kernel check.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(config(cases));
    if let Err(e) = runner.run(&input(), |input| run_case(&input).map(|_| ())) {
        panic!("{e}");
    }

    let skip = restore_skip_reason();
    match &skip {
        Some(why) => support::skip(&format!("fuzz_payload: iptables-restore --test: {why}")),
        None => {
            let cases = std::env::var("FUZZ_PAYLOAD_RESTORE_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(RESTORE_CASES);
            let mut runner = TestRunner::new(config(cases));
            let result = runner.run(&restore_input(), |input| {
                let (payloads, scripts) = run_case(&input)?;
                let ns = Netns::new();
                for (family, payload) in &payloads {
                    restore_test(&ns, *family, payload)?;
                }
                for script in &scripts {
                    nft_load(&ns, script)?;
                }
                Ok(())
            });
            if let Err(e) = result {
                panic!("{e}");
            }
        }
    }

    println!(
        "fuzz_payload: {} inputs tried ({} Services, {} EndpointSlices); {} Services rejected with errors, {} slice warnings; {} service ports built; {} payloads checked ({} DNAT rules); {} payloads ({} rules) accepted by iptables-restore --test; {} nft scripts checked, {} loaded by nft -f{}",
        INPUTS.load(Relaxed),
        SERVICES.load(Relaxed),
        SLICES.load(Relaxed),
        REJECTED.load(Relaxed),
        WARNINGS.load(Relaxed),
        PORTS.load(Relaxed),
        PAYLOADS.load(Relaxed),
        DNATS.load(Relaxed),
        RESTORED.load(Relaxed),
        RESTORED_RULES.load(Relaxed),
        NFT_CHECKED.load(Relaxed),
        NFT_LOADED.load(Relaxed),
        if skip.is_some() { " (skipped)" } else { "" },
    );
}
