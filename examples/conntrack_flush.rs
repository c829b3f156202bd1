//! Measurement probe for bench/conntrack_flush.py: deletes the UDP
//! conntrack entries DNATed to one endpoint through the given service IPs
//! (the filters a removed endpoint calls for), the old way or the new way,
//! in the network namespace it runs in, and prints what it took as one JSON
//! line.
//!
//!   conntrack_flush old ENDPOINT < VIPS
//!       one `conntrack -D` process per filter, one after the other, as the
//!       sync loop ran them before (`cleanup::args`, status awaited, output
//!       discarded): the time the loop was blocked.
//!   conntrack_flush new ENDPOINT < VIPS
//!       the cleaner's pass (`worker::pass` over a `CtSocket`): one UDP dump,
//!       the filters matched in memory, one batch of deletes; and, apart,
//!       what the sync loop itself now spends: building the work and
//!       handing it to the cleaner thread (`Cleaner::submit`).
//!
//! VIPS: one service IP per line on stdin; the filters are
//! `ToEndpoint { service_ip, endpoint }` for each.
use kube_proxy_rs::conntrack::cleanup::{args, Flush};
use kube_proxy_rs::conntrack::socket::{CtSocket, Deleted};
use kube_proxy_rs::conntrack::worker::{pass, Cleaner, Table, Work};
use kube_proxy_rs::model::Family;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Instant;

/// A table that does nothing: the handoff is measured without the pass.
struct Idle;

impl Table for Idle {
    fn dump_udp(
        &mut self,
        _: Family,
        _: &mut dyn FnMut(kube_proxy_rs::conntrack::wire::Entry),
    ) -> anyhow::Result<usize> {
        Ok(0)
    }
    fn delete(&mut self, _: &[kube_proxy_rs::conntrack::wire::Entry]) -> anyhow::Result<Deleted> {
        Ok(Deleted::default())
    }
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let (mode, endpoint) = match argv.as_slice() {
        [_, m, ep] => (m.clone(), ep.parse::<IpAddr>()?),
        _ => anyhow::bail!("usage: conntrack_flush old|new ENDPOINT < VIPS"),
    };
    let mut flushes = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if !line.trim().is_empty() {
            flushes.push(Flush::ToEndpoint {
                service_ip: line.trim().parse()?,
                endpoint,
            });
        }
    }
    let started = Instant::now();
    let out = match mode.as_str() {
        "old" => {
            for f in &flushes {
                Command::new("conntrack")
                    .args(args(f))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
            }
            let ms = started.elapsed().as_secs_f64() * 1e3;
            serde_json::json!({
                "mode": "old", "filters": flushes.len(), "processes": flushes.len(),
                "ms": ms, "loop_blocked_ms": ms,
            })
        }
        "new" => {
            let work = Work {
                flushes: flushes.iter().cloned().collect::<BTreeSet<_>>(),
                reconcile: None,
            };
            let mut ct = CtSocket::open()?;
            let r = pass(&mut ct, &work)?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            // The sync loop's share: the filters into a Work, one send.
            let cleaner = Cleaner::spawn_with(|| Ok(Box::new(Idle) as Box<dyn Table + Send>));
            let t = Instant::now();
            cleaner.submit(Work {
                flushes: flushes.iter().cloned().collect(),
                reconcile: None,
            });
            let handoff_ms = t.elapsed().as_secs_f64() * 1e3;
            serde_json::json!({
                "mode": "new", "filters": flushes.len(), "processes": 0,
                "dumps": r.dumps, "udp_entries": r.seen, "deleted": r.deleted.deleted,
                "already_gone": r.deleted.gone, "ms": ms, "loop_blocked_ms": handoff_ms,
            })
        }
        m => anyhow::bail!("unknown mode {m:?}"),
    };
    println!("{out}");
    Ok(())
}
