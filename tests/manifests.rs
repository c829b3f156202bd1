//! The manifests parse, and the ConfigMap's KubeProxyConfiguration is one this
//! proxy accepts (server-side validation against a real API server is in the
//! API-server test suite).

use kube_proxy_rs::config::KubeProxyConfiguration;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

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

fn strings(v: &serde_yaml::Value) -> BTreeSet<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// What the ClusterRole grants, as (apiGroup, resource) -> verbs.
fn grants(role: &serde_yaml::Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_sequence().unwrap() {
        let keys: BTreeSet<&str> = rule
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["apiGroups", "resources", "verbs"].into(),
            "no resourceNames or nonResourceURLs: {rule:?}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.entry((group.clone(), resource))
                    .or_default()
                    .extend(strings(&rule["verbs"]));
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_reads_of_what_it_proxies_and_event_writes() {
    let all = docs("rbac.yaml");
    let role = all.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let read = set(&["get", "list", "watch"]);
    let write_events = set(&["create", "patch", "update"]);
    let want: BTreeMap<(String, String), BTreeSet<String>> = [
        (("", "services"), &read),
        (("", "nodes"), &read),
        (("discovery.k8s.io", "endpointslices"), &read),
        // Upstream's recorder writes core Events; kube-rs' writes events.k8s.io.
        (("", "events"), &write_events),
        (("events.k8s.io", "events"), &write_events),
    ]
    .into_iter()
    .map(|((g, r), v)| ((g.to_string(), r.to_string()), v.clone()))
    .collect();
    assert_eq!(grants(role), want);
    // Bound to the DaemonSet's ServiceAccount, and nothing else.
    let binding = all
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .unwrap();
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subjects = binding["subjects"].as_sequence().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["namespace"], "kube-system");
    let ds = &docs("daemonset.yaml")[0];
    assert_eq!(
        subjects[0]["name"],
        ds["spec"]["template"]["spec"]["serviceAccountName"]
    );
    assert_eq!(
        all.iter().filter(|d| d["kind"] == "ClusterRole").count(),
        1,
        "one role"
    );
    assert!(
        !all.iter()
            .any(|d| d["kind"] == "Role" || d["kind"] == "RoleBinding"),
        "no namespaced grants"
    );
}

fn keys(v: &serde_yaml::Value) -> BTreeSet<String> {
    v.as_mapping()
        .unwrap_or_else(|| panic!("expected a mapping, got {v:?}"))
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn proxy_container_runs_with_net_admin_and_net_raw_only() {
    let ds = &docs("daemonset.yaml")[0];
    let spec = &ds["spec"]["template"]["spec"];
    let containers = spec["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(
        keys(sc),
        set(&[
            "allowPrivilegeEscalation",
            "capabilities",
            "privileged",
            "readOnlyRootFilesystem",
            "seccompProfile",
        ])
    );
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(keys(&sc["seccompProfile"]), set(&["type"]));
    assert_eq!(keys(&sc["capabilities"]), set(&["add", "drop"]));
    assert_eq!(strings(&sc["capabilities"]["drop"]), set(&["ALL"]));
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        set(&["NET_ADMIN", "NET_RAW"])
    );
    // Nothing in the pod widens that: no host PID/IPC, no pod-level override.
    for k in [
        "hostPID",
        "hostIPC",
        "securityContext",
        "shareProcessNamespace",
    ] {
        assert!(spec.get(k).is_none(), "pod-level {k} is set");
    }
    // The one writable path is the xtables lock (a file from the host).
    let writable: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] != true)
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(writable, ["/run/xtables.lock"]);
    let volumes = spec["volumes"].as_sequence().unwrap();
    let lock = volumes
        .iter()
        .find(|v| v["name"] == "xtables-lock")
        .unwrap();
    assert_eq!(lock["hostPath"]["path"], "/run/xtables.lock");
    assert_eq!(lock["hostPath"]["type"], "FileOrCreate");
    assert!(
        !volumes.iter().any(|v| v.get("emptyDir").is_some()),
        "no scratch space: the proxy and its tools write no files"
    );
}

#[test]
fn init_container_only_sets_up_the_node() {
    let ds = &docs("daemonset.yaml")[0];
    let spec = &ds["spec"]["template"]["spec"];
    let inits = spec["initContainers"].as_sequence().unwrap();
    assert_eq!(inits.len(), 1);
    let c = &inits[0];
    let command = strings(&c["command"]);
    assert!(command.contains("--init-only"), "{command:?}");
    let sc = &c["securityContext"];
    // Privileged only because runtimes mount /proc/sys and /sys read-only
    // otherwise; a capability list would be ignored, and the API refuses
    // allowPrivilegeEscalation: false next to privileged: true.
    assert_eq!(
        keys(sc),
        set(&["privileged", "readOnlyRootFilesystem", "seccompProfile"])
    );
    assert_eq!(sc["privileged"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    assert_eq!(mounts.len(), 1, "the config only: {mounts:?}");
    assert_eq!(mounts[0]["name"], "config");
    assert_eq!(mounts[0]["readOnly"], true);
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
