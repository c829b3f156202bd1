//! Stale UDP conntrack entries deleted over netlink, on the host kernel with
//! real UDP flows: the codec against the kernel and the `conntrack` tool (in
//! a bare network namespace), then the proxy deleting flows through every
//! kind of VIP after an endpoint change, and the startup reconcile of a
//! change made while it was down. Needs root; skips with a printed reason
//! otherwise (fails in CI).

mod support;

use kube_proxy_rs::conntrack::cleanup::{args, Flush};
use kube_proxy_rs::conntrack::socket::{CtSocket, Deleted};
use kube_proxy_rs::conntrack::wire::{Entry, Tuple};
use kube_proxy_rs::model::Family;
use std::collections::BTreeSet;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn tool_missing() -> Option<String> {
    (!have("conntrack")).then(|| "conntrack tool not installed (run scripts/setup.sh)".into())
}

/// Runs `f` on a thread that joined the namespace `ns`: its sockets and the
/// processes it starts live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    let r = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid namespace descriptor; only this thread moves.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The original tuples `conntrack -L ARGS` lists (in the caller's namespace).
fn tool_lists(args: &[String]) -> BTreeSet<(String, String, u16, u16)> {
    let out = Command::new("conntrack")
        .arg("-L")
        .args(args)
        .output()
        .unwrap();
    let mut got = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_default()
                .to_string()
        };
        got.insert((
            field("src="),
            field("dst="),
            field("sport=").parse().unwrap_or(0),
            field("dport=").parse().unwrap_or(0),
        ));
    }
    got
}

fn key(t: &Tuple) -> (String, String, u16, u16) {
    (t.src.to_string(), t.dst.to_string(), t.sport, t.dport)
}

fn dump(ct: &mut CtSocket, family: Family) -> Vec<Entry> {
    let mut v = Vec::new();
    ct.dump_udp(family, &mut |e| v.push(e)).unwrap();
    v
}

fn send(from: &str, sport: u16, to: &str, port: u16) {
    let s = UdpSocket::bind((from.parse::<IpAddr>().unwrap(), sport)).unwrap();
    s.send_to(b"q", (to.parse::<IpAddr>().unwrap(), port))
        .unwrap();
}

#[test]
fn netlink_dump_and_batch_delete_agree_with_the_conntrack_tool() {
    require_kernel!();
    require!(tool_missing());
    let ns = netns::Netns::new();
    let name = ns.name().to_string();
    in_netns(&name, || {
        // A link whose far side answers nothing: flows stay UNREPLIED, which
        // conntrack keeps for 30 s (more than this test takes).
        for c in [
            "ip link set lo up",
            "ip link add d0 type veth peer name d1",
            "ip addr add 10.0.0.1/24 dev d0",
            "ip addr add fd00::1/64 dev d0 nodad",
            "ip link set d0 up && ip link set d1 up",
            "ip neigh add 10.0.0.2 lladdr 02:00:00:00:00:02 dev d0",
            "ip neigh add 10.0.0.3 lladdr 02:00:00:00:00:03 dev d0",
            "ip neigh add fd00::2 lladdr 02:00:00:00:00:02 dev d0",
            "ip route add default via 10.0.0.2",
            "ip -6 route add default via fd00::2",
            // A VIP DNATed to two endpoints by source port; a NodePort on the
            // node's address; an external IP; an IPv6 VIP.
            "iptables -t nat -A OUTPUT -d 10.96.0.53 -p udp --dport 53 -m multiport --sports 40100:40199 -j DNAT --to-destination 10.0.0.3:5353",
            "iptables -t nat -A OUTPUT -d 10.96.0.53 -p udp --dport 53 -j DNAT --to-destination 10.0.0.2:5353",
            "iptables -t nat -A OUTPUT -d 10.0.0.1 -p udp --dport 30053 -j DNAT --to-destination 10.0.0.2:5353",
            "iptables -t nat -A OUTPUT -d 192.0.2.53 -p udp --dport 53 -j DNAT --to-destination 10.0.0.3:5353",
            "ip6tables -t nat -A OUTPUT -d fd00:96::53 -p udp --dport 53 -j DNAT --to-destination [fd00::2]:5353",
        ] {
            sh(c);
        }
        for sport in 40000..40010 {
            send("0.0.0.0", sport, "10.96.0.53", 53); // -> 10.0.0.2
        }
        for sport in 40100..40105 {
            send("0.0.0.0", sport, "10.96.0.53", 53); // -> 10.0.0.3
        }
        send("0.0.0.0", 40200, "10.0.0.1", 30053);
        send("0.0.0.0", 40201, "192.0.2.53", 53);
        send("0.0.0.0", 40202, "10.96.0.60", 53); // no DNAT: no endpoints
        send("0.0.0.0", 40203, "10.96.0.53", 54); // another port
        send("::", 40300, "fd00:96::53", 53);
        // A TCP entry, which a UDP dump leaves out.
        let tcp = std::net::TcpStream::connect_timeout(
            &"10.0.0.9:80".parse().unwrap(),
            Duration::from_millis(50),
        );
        assert!(tcp.is_err());
        // 600 more to the VIP: a batch of deletes larger than one send.
        for sport in 41000..41600 {
            send("0.0.0.0", sport, "10.96.0.53", 53);
        }

        let mut ct = CtSocket::open().unwrap();
        let v4 = dump(&mut ct, Family::V4);
        let v6 = dump(&mut ct, Family::V6);
        let ours = |es: &[Entry]| es.iter().map(|e| key(&e.orig)).collect::<BTreeSet<_>>();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(v4.len(), 619, "{v4:?}");
        assert_eq!(ours(&v4), tool_lists(&s(&["-f", "ipv4", "-p", "udp"])));
        assert_eq!(ours(&v6), tool_lists(&s(&["-f", "ipv6", "-p", "udp"])));
        assert_eq!(v6.len(), 1);
        assert_eq!(
            v6[0].reply.src,
            "fd00::2".parse::<IpAddr>().unwrap(),
            "{v6:?}"
        );
        assert!(
            !tool_lists(&s(&["-p", "tcp"])).is_empty(),
            "the TCP entry exists, and was not dumped"
        );

        // Every filter covers what `conntrack` with its arguments finds.
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let filters = [
            Flush::ToServiceIp {
                ip: ip("10.96.0.53"),
                port: 53,
            },
            Flush::ToServiceIp {
                ip: ip("10.96.0.60"),
                port: 53,
            },
            Flush::ToNodePort {
                family: Family::V4,
                port: 30053,
            },
            Flush::ToEndpoint {
                service_ip: ip("10.96.0.53"),
                endpoint: ip("10.0.0.3"),
            },
            Flush::ToEndpoint {
                service_ip: ip("192.0.2.53"),
                endpoint: ip("10.0.0.3"),
            },
            Flush::ToEndpoint {
                service_ip: ip("10.96.0.60"),
                endpoint: ip("10.96.0.60"),
            },
            Flush::ToNodePortEndpoint {
                family: Family::V4,
                port: 30053,
                endpoint: ip("10.0.0.2"),
            },
            Flush::ToNodePortEndpoint {
                family: Family::V4,
                port: 30053,
                endpoint: ip("10.0.0.3"),
            },
            Flush::ToServiceIp {
                ip: ip("fd00:96::53"),
                port: 53,
            },
        ];
        for f in &filters {
            let all = if f.family() == Family::V4 { &v4 } else { &v6 };
            let covered: Vec<Entry> = all.iter().filter(|e| f.covers(e)).copied().collect();
            let tool = tool_lists(&args(f)[1..]);
            assert_eq!(ours(&covered), tool, "{f:?} ({:?})", args(f));
        }
        let count = |f: &Flush| v4.iter().filter(|e| f.covers(e)).count();
        assert_eq!(count(&filters[0]), 615);
        assert_eq!(count(&filters[3]), 5);
        assert_eq!(count(&filters[6]), 1);

        // Delete the entries to the endpoint 10.0.0.3 through the VIP, all
        // the rest to the VIP (several sends), and the IPv6 one: exactly
        // those go.
        let to_3: Vec<Entry> = v4
            .iter()
            .filter(|e| filters[3].covers(e))
            .copied()
            .collect();
        assert_eq!(
            ct.delete(&to_3).unwrap(),
            Deleted {
                deleted: 5,
                gone: 0
            }
        );
        assert!(tool_lists(&args(&filters[3])[1..]).is_empty());
        let rest: Vec<Entry> = dump(&mut ct, Family::V4)
            .into_iter()
            .filter(|e| filters[0].covers(e))
            .collect();
        assert_eq!(rest.len(), 610);
        assert_eq!(
            ct.delete(&rest).unwrap(),
            Deleted {
                deleted: 610,
                gone: 0
            }
        );
        assert_eq!(ct.delete(&v6).unwrap().deleted, 1);
        let left = dump(&mut ct, Family::V4);
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(dump(&mut ct, Family::V6).is_empty());
        // Deleting them again: every one already gone, which is fine.
        assert_eq!(
            ct.delete(&to_3).unwrap(),
            Deleted {
                deleted: 0,
                gone: 5
            }
        );
        // A stale id names another entry than the one with that tuple now:
        // the kernel leaves the new one alone.
        let mut old = left[0];
        old.id = old.id.map(|i| i.wrapping_add(1));
        assert_eq!(
            ct.delete(&[old]).unwrap(),
            Deleted {
                deleted: 0,
                gone: 1
            }
        );
        assert_eq!(dump(&mut ct, Family::V4).len(), 4);
    });
}

/// One UDP query from `ns` with a fixed source port (one conntrack flow);
/// the answer's first word ("pod:port"), or "timeout".
fn udp_query(ns: &str, ip: &str, port: u16, sport: u16) -> String {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{sport}))\ns.settimeout(1)\ntry:\n  s.sendto(b'q',('{ip}',{port})); print(s.recvfrom(200)[0].decode().split()[0])\nexcept OSError: print('timeout')\n"
    );
    let out = run(&["ip", "netns", "exec", ns, "python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A UDP Service reached through a ClusterIP, an external IP, a load
/// balancer IP and a NodePort, with the given endpoints.
fn dns(endpoints: &[&str]) -> String {
    let eps: Vec<(&str, &str)> = endpoints.iter().map(|ip| (*ip, NODE_NAME)).collect();
    service(
        "dns",
        "{type: LoadBalancer, clusterIP: 10.96.0.53, externalIPs: [192.0.2.53], ports: [{port: 53, protocol: UDP, nodePort: 30053}]}",
    )
    .replace(
        "\n---\n",
        "\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.53}]}}\n---\n",
    ) + &slice("dns-1", "dns", "[{port: 5353, protocol: UDP}]", &eps)
}

#[test]
fn flows_through_every_kind_of_vip_leave_a_removed_endpoint() {
    require_kernel!();
    removed_endpoint_case(&[]);
}

/// The same in nftables mode: the cleanup is the sync loop's, whatever the
/// backend.
#[test]
fn flows_leave_a_removed_endpoint_in_nftables_mode() {
    require_kernel!();
    require!((!have("nft")).then(|| "nft not installed (run scripts/setup.sh)".to_string()));
    removed_endpoint_case(&["--proxy-mode", "nftables"]);
}

fn removed_endpoint_case(mode: &[&str]) {
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[5353]);
    lab.add_pod("pod1", 11, &[8080], &[5353]);
    lab.write("dns.yaml", &dns(&["10.244.1.10"]));
    lab.start_proxy(mode);
    let (node, client) = (lab.node.clone(), lab.client.clone());
    let flows = [
        (
            "ClusterIP from the node",
            node.as_str(),
            "10.96.0.53",
            53,
            40000,
        ),
        (
            "NodePort from outside",
            client.as_str(),
            NODE_IP,
            30053,
            40001,
        ),
        (
            "external IP from outside",
            client.as_str(),
            "192.0.2.53",
            53,
            40002,
        ),
        (
            "LB IP from outside",
            client.as_str(),
            "198.51.100.53",
            53,
            40003,
        ),
    ];
    for (what, ns, ip, port, sport) in flows {
        wait_until(what, WAIT, || udp_query(ns, ip, port, sport) == "pod0:5353");
    }
    // Each flow is now tracked to pod0, which stays alive: without the
    // cleanup the same 5-tuples would keep reaching it.
    // (A query before the sync refreshes the old entry; the cleaner deletes
    // it after the sync.)
    lab.write("dns.yaml", &dns(&["10.244.1.11"]));
    for (what, ns, ip, port, sport) in flows {
        wait_until(
            &format!("{what}: the same flow answered by pod1"),
            WAIT,
            || udp_query(ns, ip, port, sport) == "pod1:5353",
        );
    }
    // The external IP removed from the Service: its flow stops reaching the
    // endpoint (the entry would keep DNATing it there), the others go on.
    lab.write(
        "dns.yaml",
        &dns(&["10.244.1.11"]).replace("externalIPs: [192.0.2.53], ", ""),
    );
    let (_, ns, ip, port, sport) = flows[2];
    wait_until(
        "the removed external IP's flow reaches no pod",
        WAIT,
        || udp_query(ns, ip, port, sport) == "timeout",
    );
    let (_, ns, ip, port, sport) = flows[3];
    assert_eq!(udp_query(ns, ip, port, sport), "pod1:5353");
    let log = lab.log();
    for l in log.lines().filter(|l| l.contains("conntrack entries")) {
        eprintln!("{l}");
    }
    assert!(log.contains("stale UDP conntrack entries deleted"), "{log}");
    assert!(lab.proxy_running());
}

/// The `packets=` count of the original direction of the flow from `sport`
/// (accounting on), or None when there is no such entry.
fn packets(lab: &Lab, sport: u16) -> Option<u64> {
    let out = lab.in_ns(
        &lab.node,
        &[
            "conntrack",
            "-L",
            "-p",
            "udp",
            "--orig-port-src",
            &sport.to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("packets="))
        .and_then(|n| n.parse().ok())
}

#[test]
fn startup_reconcile_deletes_flows_changed_while_down_and_keeps_the_rest() {
    require_kernel!();
    require!(tool_missing());
    let mut lab = Lab::new();
    // Per-flow packet counters, so a flow's entry can be told from a new one.
    lab.in_ns(
        &lab.node,
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"],
    );
    for (i, pod) in ["pod0", "pod1", "pod2"].iter().enumerate() {
        lab.add_pod(pod, 10 + i as u8, &[8080], &[5353]);
    }
    lab.write("dns.yaml", &dns(&["10.244.1.10", "10.244.1.11"]));
    lab.start_proxy(&[]);
    let (node, client) = (lab.node.clone(), lab.client.clone());
    wait_until("UDP service answers", WAIT, || {
        udp_query(&node, "10.96.0.53", 53, 39999).starts_with("pod")
    });
    // Find a flow to each endpoint through the ClusterIP, and one to pod0
    // through the NodePort (the rules pick at random; bounded tries).
    let find = |ns: &str, ip: &str, port: u16, from: u16, want: &str| -> u16 {
        (from..from + 60)
            .find(|sport| udp_query(ns, ip, port, *sport) == want)
            .unwrap_or_else(|| panic!("no flow from {ns} to {ip}:{port} reached {want}"))
    };
    let stale = find(&node, "10.96.0.53", 53, 40000, "pod0:5353");
    let kept = find(&node, "10.96.0.53", 53, 40100, "pod1:5353");
    let stale_np = find(&client, NODE_IP, 30053, 40200, "pod0:5353");
    for _ in 0..2 {
        assert_eq!(udp_query(&node, "10.96.0.53", 53, kept), "pod1:5353");
    }
    let before = packets(&lab, kept).expect("the kept flow is tracked");
    assert!(before >= 3, "{before}");

    // Down: rules stay. pod0 leaves, pod2 joins; the flows to pod0 still
    // reach it (their entries pin them).
    lab.stop_proxy(false);
    lab.write("dns.yaml", &dns(&["10.244.1.11", "10.244.1.12"]));
    assert_eq!(udp_query(&node, "10.96.0.53", 53, stale), "pod0:5353");
    assert_eq!(udp_query(&client, NODE_IP, 30053, stale_np), "pod0:5353");

    lab.start_proxy(&[]);
    wait_until("pod0 gone from the rules", WAIT, || {
        !lab.save(false, "nat").contains("10.244.1.10:5353")
    });
    let moved = |ns: &str, ip: &str, port: u16, sport: u16| {
        let who = udp_query(ns, ip, port, sport);
        who == "pod1:5353" || who == "pod2:5353"
    };
    wait_until(
        "the stale ClusterIP flow reaches a current endpoint",
        Duration::from_secs(5),
        || moved(&node, "10.96.0.53", 53, stale),
    );
    wait_until(
        "the stale NodePort flow reaches a current endpoint",
        Duration::from_secs(5),
        || moved(&client, NODE_IP, 30053, stale_np),
    );
    // The flow to pod1 kept its entry across the restart: same endpoint,
    // and its packet count went on (a flushed flow would start again at 1).
    assert_eq!(udp_query(&node, "10.96.0.53", 53, kept), "pod1:5353");
    let after = packets(&lab, kept).expect("the kept flow is tracked");
    assert!(
        after > before,
        "the flow to a current endpoint was flushed at startup: {before} packets before, {after} after"
    );
    let log = lab.log();
    for l in log.lines().filter(|l| l.contains("conntrack entries")) {
        eprintln!("{l}");
    }
    assert!(
        log.contains("reconciled with the services at startup"),
        "the startup reconcile is logged: {log}"
    );
}
