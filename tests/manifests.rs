//! The manifests parse, and the ConfigMap's KubeProxyConfiguration is one this
//! proxy accepts (server-side validation against a real API server is in the
//! API-server test suite).

use kube_proxy_rs::config::KubeProxyConfiguration;
use serde::Deserialize;

fn docs(file: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(format!("{}/manifests/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn configmap_holds_a_valid_config() {
    let cm = &docs("configmap.yaml")[0];
    let conf = cm["data"]["config.conf"].as_str().unwrap();
    let cfg = KubeProxyConfiguration::parse(conf).unwrap();
    assert_eq!(cfg.mode.as_deref(), Some("iptables"));
    assert!(cfg.unused_fields().is_empty(), "{:?}", cfg.unused_fields());
}

#[test]
fn rbac_grants_only_reads_and_events() {
    let all = docs("rbac.yaml");
    let role = all.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    for rule in role["rules"].as_sequence().unwrap() {
        let verbs: Vec<&str> = rule["verbs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let resources: Vec<&str> = rule["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        if resources == ["events"] {
            assert!(verbs
                .iter()
                .all(|v| ["create", "patch", "update"].contains(v)));
        } else {
            assert!(
                verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                "{resources:?}: {verbs:?}"
            );
        }
    }
}

#[test]
fn daemonset_runs_on_every_node_with_host_network() {
    let ds = &docs("daemonset.yaml")[0];
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
}
