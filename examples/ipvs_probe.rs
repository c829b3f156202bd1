//! Measurement probe for bench/compare_ipvs.py: reads the kernel's IPVS
//! state from outside any proxy, so both proxies are judged by what the
//! kernel holds, not by their logs. Runs in the proxy's network namespace.
//!
//!   ipvs_probe count PORT M
//!       prints "vs=<virtual servers> full=<TCP virtual servers on PORT with
//!       at least M real servers>" from /proc/net/ip_vs (one read).
//!   ipvs_probe wait VIP:PORT IP TIMEOUT_MS [NOTIFY_ADDR:PORT TOKEN]
//!       prints "armed" once it has looked and IP is not yet a real server of
//!       VIP:PORT (TCP), then asks the kernel over netlink every 0.5 ms and
//!       prints the CLOCK_MONOTONIC time (seconds) at which IP showed up, or
//!       "timeout". With NOTIFY, it first sends TOKEN in one UDP datagram
//!       there (so a driver on another machine stamps the moment by its own
//!       clock).
//!   ipvs_probe floor COUNT
//!       adds one real server to a scratch virtual server (10.255.255.254:81)
//!       and removes it again, COUNT times; prints each add's time in ms: the
//!       kernel's own cost of the change a proxy makes for an endpoint.
//!   ipvs_probe watch KUBECONFIG NAMESPACE NOTIFY_ADDR:PORT
//!       watches the namespace's EndpointSlices from now on (kube-rs, as a
//!       proxy does) and, for every modified slice, sends the first address
//!       of its first endpoint in one UDP datagram to NOTIFY: the moment a
//!       bare watcher in this machine learns of a change, with nothing
//!       programmed (the delivery floor under any proxy's latency). Prints
//!       "watching" once the watch is open; runs until killed.
use kube_proxy_rs::ipvs::desired::Op;
use kube_proxy_rs::ipvs::netlink::{IpvsKernel, IpvsSocket};
use kube_proxy_rs::ipvs::wire::{Destination, ServiceId, VirtualServer};
use kube_proxy_rs::model::Protocol;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Counts virtual servers, and TCP ones on `port` with at least `m` real
/// servers, in the text of /proc/net/ip_vs (addresses are hex there).
fn count(text: &str, port: u16, m: usize) -> (usize, usize) {
    let (mut vs, mut full) = (0, 0);
    let mut current: Option<(bool, usize)> = None;
    let close = |c: Option<(bool, usize)>, full: &mut usize| {
        if let Some((ours, dests)) = c {
            if ours && dests >= m {
                *full += 1;
            }
        }
    };
    let want = format!(":{port:04X}");
    for line in text.lines() {
        if line.starts_with("TCP") || line.starts_with("UDP") || line.starts_with("SCTP") {
            close(current.take(), &mut full);
            vs += 1;
            let addr = line.split_whitespace().nth(1).unwrap_or("");
            current = Some((line.starts_with("TCP") && addr.ends_with(&want), 0));
        } else if line.trim_start().starts_with("->") && !line.contains("RemoteAddress") {
            if let Some((_, d)) = current.as_mut() {
                *d += 1;
            }
        }
    }
    close(current, &mut full);
    (vs, full)
}

fn wait(
    vip: SocketAddr,
    ip: IpAddr,
    timeout: Duration,
    notify: Option<(SocketAddr, &str)>,
) -> anyhow::Result<()> {
    let udp = match notify {
        Some((to, _)) => {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.connect(to)?;
            Some(s)
        }
        None => None,
    };
    let mut sock = IpvsSocket::connect()?;
    let id = ServiceId {
        addr: vip.ip(),
        protocol: Protocol::Tcp,
        port: vip.port(),
    };
    let has = |sock: &mut IpvsSocket| -> bool {
        sock.dests(&id)
            .map(|d| d.iter().any(|(dest, _)| dest.addr == ip))
            .unwrap_or(false)
    };
    let mut out = std::io::stdout();
    if has(&mut sock) {
        writeln!(out, "present")?;
        return Ok(());
    }
    writeln!(out, "armed")?;
    out.flush()?;
    let start = Instant::now();
    while start.elapsed() < timeout {
        if has(&mut sock) {
            let at = monotonic();
            if let (Some(s), Some((_, token))) = (&udp, notify) {
                s.send(token.as_bytes())?;
            }
            writeln!(out, "{at:.6}")?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    writeln!(out, "timeout")?;
    Ok(())
}

fn floor(count: usize) -> anyhow::Result<()> {
    let mut sock = IpvsSocket::connect()?;
    let id = ServiceId {
        addr: "10.255.255.254".parse()?,
        protocol: Protocol::Tcp,
        port: 81,
    };
    sock.apply(&Op::AddService(VirtualServer {
        id: id.clone(),
        scheduler: "rr".into(),
        persistence: None,
    }))?;
    let mut times = Vec::with_capacity(count);
    for k in 0..count {
        let dest = Destination {
            addr: IpAddr::from([10, 255, 254, (k % 250) as u8 + 1]),
            port: 8080,
            weight: 1,
        };
        let t = Instant::now();
        sock.apply(&Op::AddDest(id.clone(), dest.clone()))?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        sock.apply(&Op::DelDest(id.clone(), dest))?;
    }
    sock.apply(&Op::DelService(id))?;
    let line: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    println!("{}", line.join(" "));
    Ok(())
}

fn watch(kubeconfig: &str, namespace: &str, notify: SocketAddr) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, ListParams, WatchEvent, WatchParams};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let api: Api<EndpointSlice> = Api::namespaced(kube::Client::try_from(cfg)?, namespace);
        // Start from the collection's current version: no replay of what exists.
        let rv = api
            .list_metadata(&ListParams::default().limit(1))
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let udp = std::net::UdpSocket::bind("0.0.0.0:0")?;
        udp.connect(notify)?;
        let mut events = Box::pin(api.watch(&WatchParams::default().timeout(290), &rv).await?);
        println!("watching");
        std::io::stdout().flush()?;
        while let Some(ev) = events.try_next().await? {
            if let WatchEvent::Modified(sl) = ev {
                if let Some(ip) = sl.endpoints.first().and_then(|e| e.addresses.first()) {
                    udp.send(ip.as_bytes())?;
                }
            }
        }
        anyhow::bail!("the watch ended")
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("count") if args.len() == 4 => {
            let text = std::fs::read_to_string("/proc/net/ip_vs").unwrap_or_default();
            let (vs, full) = count(&text, args[2].parse()?, args[3].parse()?);
            println!("vs={vs} full={full}");
            Ok(())
        }
        Some("wait") if args.len() == 5 || args.len() == 7 => wait(
            args[2].parse()?,
            args[3].parse()?,
            Duration::from_millis(args[4].parse()?),
            match args.get(5) {
                Some(to) => Some((to.parse()?, args[6].as_str())),
                None => None,
            },
        ),
        Some("floor") if args.len() == 3 => floor(args[2].parse()?),
        Some("watch") if args.len() == 5 => watch(&args[2], &args[3], args[4].parse()?),
        _ => anyhow::bail!(
            "usage: ipvs_probe count PORT M | wait VIP:PORT IP TIMEOUT_MS [NOTIFY TOKEN] | floor COUNT | watch KUBECONFIG NAMESPACE NOTIFY"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_full_services_on_the_port() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)\n\
Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n\
TCP  0A640001:0050 rr\n  -> 0A800001:1F90      Masq    1      0          0\n  -> 0A800002:1F90      Masq    1      0          0\n\
TCP  0A640002:0050 rr\n  -> 0A800003:1F90      Masq    1      0          0\n\
UDP  0A640003:0050 rr\n  -> 0A800004:1F90      Masq    1      0          0\n  -> 0A800005:1F90      Masq    1      0          0\n\
TCP  0A600001:01BB rr\n  -> 0A800006:1F90      Masq    1      0          0\n  -> 0A800007:1F90      Masq    1      0          0\n";
        assert_eq!(count(text, 80, 2), (4, 1));
        assert_eq!(count(text, 80, 1), (4, 2));
        assert_eq!(count(text, 443, 2), (4, 1));
    }
}
