//! bench/nft_layout.py's probe: reads a table back the way the nftables
//! backend's periodic check does (netlink, no set elements) and prints the
//! time it took with what it found, as one JSON line.
//! Usage: nft_list [ip|ip6] TABLE

use kube_proxy_rs::model::Family;

/// The family and table named on the command line (`ip`, `kube-proxy-rs`
/// when left out).
fn target(args: &[String]) -> (Family, &str) {
    let family = match args.get(1).map(String::as_str) {
        Some("ip6") => Family::V6,
        _ => Family::V4,
    };
    (
        family,
        args.get(2).map(String::as_str).unwrap_or("kube-proxy-rs"),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (family, table) = target(&args);
    let t0 = std::time::Instant::now();
    let listing = kube_proxy_rs::xtables::nft_dump::dump_table(family, table);
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match listing {
        Ok(Some(l)) => println!(
            "{{\"ms\": {ms:.3}, \"chains\": {}, \"rules\": {}, \"sets\": {}}}",
            l.chains.len(),
            l.chains.values().sum::<usize>(),
            l.sets.len()
        ),
        Ok(None) => println!("{{\"ms\": {ms:.3}, \"table\": null}}"),
        Err(e) => {
            eprintln!("nft_list: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_family_and_table() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(target(&args(&["nft_list"])), (Family::V4, "kube-proxy-rs"));
        assert_eq!(
            target(&args(&["nft_list", "ip6", "kube-proxy"])),
            (Family::V6, "kube-proxy")
        );
    }
}
