//! The real binary run the way manifests/daemonset.yaml runs it, on the host
//! kernel in a namespace lab: first `--init-only` as the privileged init
//! container (every capability, read-only root filesystem), then the proxy
//! as the main container: exactly NET_ADMIN and NET_RAW in its capability
//! sets (bounding, permitted, effective; inheritable and ambient empty, as
//! runtimes set them for `drop: [ALL]` + `add:`), no_new_privs
//! (`allowPrivilegeEscalation: false`), every filesystem read-only except the
//! /run/xtables.lock hostPath file (`readOnlyRootFilesystem: true`), and
//! /proc/sys and /sys read-only (what runtimes do for a container that is not
//! privileged). It stays uid 0, as the container does: for root, exec grants
//! the bounding set, so the iptables-restore it runs gets the same two
//! capabilities (checked from inside that child) without ambient ones.
//! Real traffic proves the ClusterIP and NodePort are programmed and answered.
//! Not emulated: the runtime's seccomp profile.

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// CAP_NET_ADMIN (12) and CAP_NET_RAW (13).
const NET_ADMIN_AND_NET_RAW: &str = "0000000000003000";

/// Mounts every filesystem read-only except /proc, /dev and the paths in
/// `$KPRS_KEEP_RW` (bind-mounted onto themselves first so they stay
/// writable), then execs the rest of the command line. Run in a fresh mount
/// namespace (`unshare -m`, private propagation: nothing leaks to the host).
const READ_ONLY_ROOT: &str = r#"set -e
for p in $KPRS_KEEP_RW; do mount --bind "$p" "$p"; done
awk '{print $5}' /proc/self/mountinfo | while read -r m; do
  case "$m" in /proc|/proc/*|/dev|/dev/*) continue ;; esac
  for p in $KPRS_KEEP_RW; do [ "$m" = "$p" ] && continue 2; done
  # Mounts hidden under another (ip netns exec remounts /sys) cannot be
  # remounted; the test checks the paths that matter are read-only.
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
"#;

/// The main container's restrictions, then the command.
const CONTAINER: &str = r#"mount -o bind,ro /proc/sys /proc/sys
exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all,+net_admin,+net_raw --no-new-privs -- "$0" "$@"
"#;

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The capability sets and no_new_privs of a /proc/PID/status.
fn assert_container_creds(status: &str, who: &str) {
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(
            status_field(status, set),
            NET_ADMIN_AND_NET_RAW,
            "{who}: {set} is exactly NET_ADMIN and NET_RAW:\n{status}"
        );
    }
    for set in ["CapInh", "CapAmb"] {
        assert_eq!(
            status_field(status, set),
            "0000000000000000",
            "{who}: {set} is empty:\n{status}"
        );
    }
    assert_eq!(status_field(status, "NoNewPrivs"), "1", "{who}:\n{status}");
    assert_eq!(
        status_field(status, "Uid").split_whitespace().next(),
        Some("0"),
        "{who}: uid 0, as in the container"
    );
}

/// A lab with three pods behind a ClusterIP and a NodePort, the init step
/// done as the init container does it, and the proxy started as the main
/// container with `extra` flags; returns the lab and the probe directory.
fn hardened_lab(extra: &[&str]) -> (Lab, std::path::PathBuf) {
    let mut lab = Lab::new();
    pods3(&mut lab);
    let mut objs = service("web", "{type: NodePort, clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}");
    objs += &slice("web-1", "web", "[{name: http, port: 8080}]", &LOCAL3);
    lab.write("objects.yaml", &objs);
    let _ = lab.in_ns(
        &lab.node,
        &["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=0"],
    );

    // The init container: privileged, read-only root filesystem.
    let init = lab.in_ns(
        &lab.node,
        &[
            "env",
            "KPRS_KEEP_RW=",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!("{READ_ONLY_ROOT}exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_kube-proxy-rs"),
            "--init-only",
        ],
    );
    assert!(
        init.status.success(),
        "--init-only with a read-only root: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let rl = lab.in_ns(
        &lab.node,
        &["sysctl", "-n", "net.ipv4.conf.all.route_localnet"],
    );
    assert_eq!(String::from_utf8_lossy(&rl.stdout).trim(), "1");

    // The kubelet's FileOrCreate for the xtables-lock hostPath.
    let lock = Path::new("/run/xtables.lock");
    if !lock.exists() {
        std::fs::write(lock, "").unwrap();
    }
    // Test-only: a writable directory where a stand-in iptables-restore
    // records its own credentials before running the real one.
    let probe = lab.dir.path().join("probe");
    std::fs::create_dir(&probe).unwrap();
    let restore = if extra.contains(&"legacy") {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    };
    let real = must(&["sh", "-c", &format!("command -v {restore}")])
        .trim()
        .to_string();
    let bin = lab.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join(restore),
        format!(
            "#!/bin/sh\ngrep -E '^(Cap|NoNewPrivs|Uid)' /proc/self/status > {}/restore.$$\nexec {real} \"$@\"\n",
            probe.display()
        ),
    )
    .unwrap();
    must(&["chmod", "+x", &path_str(&bin.join(restore))]);

    lab.proxy_wrapper = vec![
        "env".into(),
        format!("KPRS_KEEP_RW=/run/xtables.lock {}", probe.display()),
        format!(
            "PATH={}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        format!("{READ_ONLY_ROOT}{CONTAINER}"),
    ];
    lab.start_proxy(extra);
    (lab, probe)
}

fn check_hardened(lab: &mut Lab, probe: &Path, flavor: &str) {
    wait_until("rules programmed", WAIT, || {
        lab.save(false, "nat").contains("KUBE-SVC-")
    });
    assert!(lab.proxy_running(), "proxy exited: {}", lab.log());
    let pid = lab.proxy_pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    println!(
        "proxy ({flavor}): CapEff {} CapPrm {} CapBnd {} CapInh {} CapAmb {} NoNewPrivs {}",
        status_field(&status, "CapEff"),
        status_field(&status, "CapPrm"),
        status_field(&status, "CapBnd"),
        status_field(&status, "CapInh"),
        status_field(&status, "CapAmb"),
        status_field(&status, "NoNewPrivs"),
    );
    assert_eq!(lab.proxy_caps(), NET_ADMIN_AND_NET_RAW);
    assert_container_creds(&status, "the proxy");

    // Its child iptables-restore had exactly the same.
    let seen: Vec<_> = std::fs::read_dir(probe)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        !seen.is_empty(),
        "{flavor}: the proxy ran no iptables-restore"
    );
    for p in &seen {
        let child = std::fs::read_to_string(p).unwrap();
        assert_container_creds(&child, "its iptables-restore");
    }
    println!(
        "{} iptables-restore run(s), each with CapEff {NET_ADMIN_AND_NET_RAW} and no_new_privs",
        seen.len()
    );

    // Its filesystems are read-only but for the xtables lock.
    let in_its_mounts =
        |cmd: &str| run(&["nsenter", "-t", &pid.to_string(), "-m", "sh", "-c", cmd]);
    for path in ["/tmp", "/run", "/var/tmp", "/"] {
        let w = in_its_mounts(&format!("touch {path}/kprs-hardened-probe"));
        assert!(
            !w.status.success(),
            "{path} is writable in the proxy's mounts"
        );
        assert!(
            String::from_utf8_lossy(&w.stderr).contains("Read-only file system"),
            "{path}: {}",
            String::from_utf8_lossy(&w.stderr)
        );
    }
    // (Writing back the value there: harmless should the check ever fail.)
    for path in ["/proc/sys/net/ipv4/ip_forward", "/sys/kernel/uevent_helper"] {
        let w = in_its_mounts(&format!("v=$(cat {path}); echo \"$v\" > {path}"));
        assert!(
            String::from_utf8_lossy(&w.stderr).contains("Read-only file system"),
            "{path} is writable: {}",
            String::from_utf8_lossy(&w.stderr)
        );
    }
    let lock = in_its_mounts(": >> /run/xtables.lock");
    assert!(lock.status.success(), "the xtables lock stays writable");

    // Real traffic: the ClusterIP from the node and from a pod, the NodePort
    // from outside.
    let pods = ["pod0:8080", "pod1:8080", "pod2:8080"];
    at_least_each(&spread(&lab.node, "http://10.96.0.10/", 30), &pods, 1);
    at_least_each(
        &spread(&lab.pod_ns("pod1"), "http://10.96.0.10/", 30),
        &pods,
        1,
    );
    at_least_each(
        &spread(&lab.client, &format!("http://{NODE_IP}:30080/"), 30),
        &pods,
        1,
    );
    // An endpoint change while running is programmed too.
    lab.write(
        "objects.yaml",
        &(service("web", "{type: NodePort, clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]}")
            + &slice("web-1", "web", "[{name: http, port: 8080}]", &LOCAL3[..1])),
    );
    wait_until("one endpoint left", WAIT, || {
        spread(&lab.node, "http://10.96.0.10/", 4)
            .keys()
            .collect::<Vec<_>>()
            == ["pod0:8080"]
    });
    assert!(lab.proxy_running(), "still running: {}", lab.log());
    assert!(!lab.log().contains("ERROR"), "{}", lab.log());
}

#[test]
fn runs_as_the_daemonset_container_with_exactly_net_admin_and_net_raw() {
    require_kernel!();
    require!(["unshare", "setpriv", "nsenter", "awk"]
        .into_iter()
        .find(|t| !have(t))
        .map(|t| format!("{t} not installed (util-linux, awk)")));
    let (mut lab, probe) = hardened_lab(&[]);
    check_hardened(&mut lab, &probe, "auto");
}

/// The same with the legacy tools, which take /run/xtables.lock.
#[test]
fn runs_as_the_daemonset_container_with_legacy_iptables() {
    require_kernel!();
    require!(["unshare", "setpriv", "nsenter", "awk"]
        .into_iter()
        .find(|t| !have(t))
        .map(|t| format!("{t} not installed (util-linux, awk)")));
    require!(legacy_iptables_unusable());
    let (mut lab, probe) = hardened_lab(&["--iptables-backend", "legacy"]);
    lab.flavor = "-legacy".into();
    check_hardened(&mut lab, &probe, "legacy");
    assert!(lab.log().contains("legacy=true"), "{}", lab.log());
}
