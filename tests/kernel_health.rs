//! Health, metrics, healthCheckNodePort servers and node awareness, against the
//! real binary in a network namespace. Needs root; skips otherwise.

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(15);
const HEALTHZ: &str = "http://127.0.0.1:10256";

fn web(ep: &str, node: &str) -> String {
    service(
        "web",
        "{clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}",
    ) + &slice("web-1", "web", "[{port: 8080}]", &[(ep, node)])
}

#[test]
fn healthz_livez_and_metrics_follow_syncs_and_failures() {
    require_kernel!();
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    lab.add_pod("pod1", 11, &[8080], &[]);
    lab.write("web.yaml", &web("10.244.1.10", NODE_NAME));
    let (flag, path) = lab.restore_fault_injector();

    lab.start_proxy_env(&["--sync-period", "1s"], &[("PATH", path)]);
    let node = lab.node.clone();
    wait_until("ClusterIP answers", WAIT, || {
        curl(&node, "http://10.96.0.10/", 1).is_ok()
    });
    // Health and metrics are updated right after the restore that made the
    // rules visible: the last of them set marks the end of that sync.
    wait_until("metrics of the first sync", WAIT, || {
        metric(&node, "kube_proxy_rs_service_ports") == 1.0
    });

    let (code, body) = http_get(&node, &format!("{HEALTHZ}/healthz"));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"lastUpdated\": \"20") && body.contains("\"nodeEligible\": true"),
        "{body}"
    );
    assert_eq!(http_get(&node, &format!("{HEALTHZ}/livez")).0, 200);
    assert!(metric(&node, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 1.7e9);
    assert!(metric(&node, "kubeproxy_sync_proxy_rules_iptables_total") > 5.0);
    assert_eq!(metric(&node, "kube_proxy_rs_service_ports"), 1.0);
    let syncs = metric(&node, "kubeproxy_sync_proxy_rules_duration_seconds_count");
    let changes = metric(&node, "kubeproxy_sync_proxy_rules_endpoint_changes_total");
    assert!(syncs >= 1.0);
    assert_eq!(
        http_get(&node, "http://127.0.0.1:10249/proxyMode").1,
        "iptables"
    );

    // An endpoint change moves the counters.
    lab.write("web.yaml", &web("10.244.1.11", NODE_NAME));
    wait_until("pod1 answers", WAIT, || {
        curl(&node, "http://10.96.0.10/", 1).is_ok_and(|b| b.starts_with("pod1"))
    });
    wait_until("sync counted", WAIT, || {
        metric(&node, "kubeproxy_sync_proxy_rules_duration_seconds_count") > syncs
    });
    assert!(metric(&node, "kubeproxy_sync_proxy_rules_endpoint_changes_total") > changes);

    // The kernel side fails: rules stay, health goes 503 after 2 x sync period.
    std::fs::write(&flag, "").unwrap();
    lab.write("web.yaml", &web("10.244.1.10", NODE_NAME));
    wait_until("/livez fails", WAIT, || {
        http_get(&node, &format!("{HEALTHZ}/livez")).0 == 503
    });
    assert_eq!(http_get(&node, &format!("{HEALTHZ}/healthz")).0, 503);
    assert!(
        curl(&node, "http://10.96.0.10/", 1).is_ok(),
        "old rules still serve"
    );
    assert!(metric(&node, "kube_proxy_rs_sync_failures_total") >= 1.0);
    assert!(
        metric(
            &node,
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"
        ) >= 1.0
    );
    assert_eq!(
        lab.log()
            .matches("sync failed; rules in the kernel are left")
            .count(),
        1,
        "logged once per episode"
    );
    // The fault clears: the retry goes through and health recovers.
    std::fs::remove_file(&flag).unwrap();
    wait_until("/healthz recovers", WAIT, || {
        http_get(&node, &format!("{HEALTHZ}/healthz")).0 == 200
    });
    wait_until("pod0 answers again", WAIT, || {
        curl(&node, "http://10.96.0.10/", 1).is_ok_and(|b| b.starts_with("pod0"))
    });
    assert!(lab.log().contains("sync recovered"));
}

#[test]
fn health_check_node_port_follows_local_endpoints() {
    require_kernel!();
    health_check_node_port_follows_local_endpoints_in(&[]);
}

#[test]
fn health_check_node_port_follows_local_endpoints_nftables() {
    require_kernel!();
    health_check_node_port_follows_local_endpoints_in(&["--proxy-mode", "nftables"]);
}

fn health_check_node_port_follows_local_endpoints_in(mode: &[&str]) {
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    let lb = |node: &str| {
        service(
            "lb",
            "{type: LoadBalancer, clusterIP: 10.96.0.20, externalTrafficPolicy: Local, healthCheckNodePort: 32100, ports: [{port: 80, targetPort: 8080, nodePort: 30100}]}",
        ) + &slice("lb-1", "lb", "[{port: 8080}]", &[("10.244.1.10", node)])
    };
    lab.write("lb.yaml", &lb(NODE_NAME));
    lab.start_proxy(mode);
    let node = lab.node.clone();
    let client = lab.client.clone();
    let url = format!("http://{NODE_IP}:32100/");
    wait_until("health check port answers 200", WAIT, || {
        http_get(&client, &url).0 == 200
    });
    let (_, body) = http_get(&client, &url);
    assert_eq!(body, "{\"service\": {\"namespace\": \"test\", \"name\": \"lb\"}, \"localEndpoints\": 1, \"serviceProxyHealthy\": true}");
    // The endpoint moves to another node: 503, and external traffic is dropped here.
    lab.write("lb.yaml", &lb("node-b"));
    wait_until("health check port answers 503", WAIT, || {
        http_get(&client, &url).0 == 503
    });
    assert!(http_get(&client, &url).1.contains("\"localEndpoints\": 0"));
    // The Service goes away: the port closes.
    lab.remove("lb.yaml");
    wait_until("health check port closed", WAIT, || {
        http_get(&node, "http://127.0.0.1:32100/").0 == 0
    });
}

#[test]
fn node_object_drives_eligibility_and_topology() {
    require_kernel!();
    node_object_drives_eligibility_and_topology_in(&[]);
}

#[test]
fn node_object_drives_eligibility_and_topology_nftables() {
    require_kernel!();
    node_object_drives_eligibility_and_topology_in(&["--proxy-mode", "nftables"]);
}

fn node_object_drives_eligibility_and_topology_in(mode: &[&str]) {
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    lab.add_pod("pod1", 11, &[8080], &[]);
    let node_obj = |zone: &str, deleting: bool| {
        let del = if deleting {
            ", deletionTimestamp: \"2026-01-01T00:00:00Z\", finalizers: [x]"
        } else {
            ""
        };
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_NAME}, labels: {{topology.kubernetes.io/zone: {zone}}}{del}}}\n")
    };
    let svc = service("near", "{clusterIP: 10.96.0.30, trafficDistribution: PreferClose, ports: [{port: 80, targetPort: 8080}]}")
        + "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: near-1, namespace: test, labels: {kubernetes.io/service-name: near}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n- {addresses: [10.244.1.10], zone: zone-a, hints: {forZones: [{name: zone-a}]}}\n- {addresses: [10.244.1.11], zone: zone-b, hints: {forZones: [{name: zone-b}]}}\n";
    lab.write("near.yaml", &svc);
    lab.write("node.yaml", &node_obj("zone-a", false));
    lab.start_proxy(mode);
    let node = lab.node.clone();
    wait_until("service answers", WAIT, || {
        curl(&node, "http://10.96.0.30/", 1).is_ok()
    });
    let hits = spread(&node, "http://10.96.0.30/", 20);
    assert_eq!(
        hits.get("pod0:8080"),
        Some(&20),
        "zone-a hints only: {hits:?}"
    );
    // The node moves to zone-b: traffic follows the hints.
    lab.write("node.yaml", &node_obj("zone-b", false));
    wait_until("zone-b endpoint used", WAIT, || {
        spread(&node, "http://10.96.0.30/", 5).get("pod1:8080") == Some(&5)
    });
    // The node is being deleted: /healthz fails, /livez does not.
    lab.write("node.yaml", &node_obj("zone-b", true));
    wait_until("/healthz 503", WAIT, || {
        http_get(&node, &format!("{HEALTHZ}/healthz")).0 == 503
    });
    let (code, body) = http_get(&node, &format!("{HEALTHZ}/healthz"));
    assert!(
        code == 503 && body.contains("\"nodeEligible\": false"),
        "{body}"
    );
    assert_eq!(http_get(&node, &format!("{HEALTHZ}/livez")).0, 200);
}

#[test]
fn nodeport_addresses_primary_follow_the_node_object() {
    require_kernel!();
    nodeport_addresses_primary_follow_the_node_object_in(&[]);
}

#[test]
fn nodeport_addresses_primary_follow_the_node_object_nftables() {
    require_kernel!();
    nodeport_addresses_primary_follow_the_node_object_in(&["--proxy-mode", "nftables"]);
}

fn nodeport_addresses_primary_follow_the_node_object_in(mode: &[&str]) {
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    let node_obj = |ip: &str| {
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_NAME}}}\nstatus: {{addresses: [{{type: Hostname, address: {NODE_NAME}}}, {{type: InternalIP, address: \"{ip}\"}}]}}\n")
    };
    lab.write(
        "np.yaml",
        &(service("np", "{type: NodePort, clusterIP: 10.96.0.40, ports: [{port: 80, targetPort: 8080, nodePort: 30040}]}")
            + &slice("np-1", "np", "[{port: 8080}]", &[("10.244.1.10", NODE_NAME)])),
    );
    lab.write("node.yaml", &node_obj(NODE_IP));
    let mut args = vec!["--nodeport-addresses", "primary"];
    args.extend_from_slice(mode);
    lab.start_proxy(&args);
    let (node, client) = (lab.node.clone(), lab.client.clone());
    wait_until("NodePort on the primary IP", WAIT, || {
        curl(&client, &format!("http://{NODE_IP}:30040/"), 1).is_ok()
    });
    // Not on the node's other addresses.
    assert!(curl(&node, &format!("http://{BRIDGE_IP}:30040/"), 1).is_err());
    // The Node's InternalIP changes to the bridge address: the NodePort moves.
    lab.write("node.yaml", &node_obj(BRIDGE_IP));
    wait_until("NodePort moved to the new primary IP", WAIT, || {
        curl(&node, &format!("http://{BRIDGE_IP}:30040/"), 1).is_ok()
    });
    assert!(curl(&client, &format!("http://{NODE_IP}:30040/"), 1).is_err());
}
