//! The nft binary, behind the [`NftKernel`] trait (faked in tests): one
//! `nft -f -` per transaction, scripts over stdin; `nft -t list table` to
//! read a table's chains and sets back without its elements (over
//! netlink, [`super::nft_dump`]). The nftables
//! backend programs through it; every mode removes nftables mode's tables
//! (ours and upstream's) through it when it takes a node over.

use crate::model::Family;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

pub use super::nft_dump::TableListing;

pub trait NftKernel: Send {
    /// Runs `script` as one transaction (`nft -f -`): all of it or nothing.
    fn apply(&mut self, script: &str) -> Result<()>;
    /// A table's chains (with rule counts) and sets, read over netlink
    /// without its elements; `None` when there is no such table.
    fn list(&mut self, family: Family, table: &str) -> Result<Option<TableListing>>;
}

/// `ip` or `ip6`: a table's family, and the address match keyword.
pub fn nf_family(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// nftables mode's table (in both families).
pub const OUR_TABLE: &str = "kube-proxy-rs";
/// Upstream kube-proxy's nftables-mode table.
pub const UPSTREAM_TABLE: &str = "kube-proxy";
/// nftables mode's tables: ours, and upstream kube-proxy's.
pub const NFT_TABLES: [&str; 2] = [OUR_TABLE, UPSTREAM_TABLE];

/// The tables of [`NFT_TABLES`] this node has, per family.
pub fn nft_tables_present(
    nft: &mut dyn NftKernel,
    families: &[Family],
) -> Result<Vec<(Family, &'static str)>> {
    let mut out = Vec::new();
    for &f in families {
        for t in NFT_TABLES {
            if nft.list(f, t)?.is_some() {
                out.push((f, t));
            }
        }
    }
    Ok(out)
}

/// Deletes the given tables, in one transaction.
pub fn delete_nft_tables(nft: &mut dyn NftKernel, tables: &[(Family, &str)]) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let script: String = tables
        .iter()
        .map(|(f, t)| format!("delete table {} {t}\n", nf_family(*f)))
        .collect();
    nft.apply(&script)
}

/// The real nft, as a factory.
pub fn system_nft() -> NftFactory {
    Arc::new(|| Box::new(SystemNft) as Box<dyn NftKernel>)
}

/// For iptables and ipvs mode's scan: nftables mode's tables on this node
/// (none when there is no nft, or it cannot be read: nothing to remove).
pub fn nft_leftovers(nft: Option<NftFactory>, families: &[Family]) -> Vec<(Family, &'static str)> {
    let Some(nft) = nft else { return vec![] };
    nft_tables_present(nft().as_mut(), families).unwrap_or_else(|e| {
        tracing::debug!(error = %format!("{e:#}"), "cannot read nftables; not looking for nftables mode's tables");
        vec![]
    })
}

/// After a sync of iptables or ipvs mode: removes nftables mode's tables
/// the scan found (`found` is emptied), once this mode's rules are in place.
pub fn remove_leftover_tables(
    nft: &Option<NftFactory>,
    found: &mut Vec<(Family, &'static str)>,
) -> Result<()> {
    let Some(nft) = nft else { return Ok(()) };
    if found.is_empty() {
        return Ok(());
    }
    tracing::info!(tables = ?found, "removing nftables mode's tables now that this mode's rules are in place");
    match delete_nft_tables(nft().as_mut(), found) {
        Ok(()) => found.clear(),
        // Our rules are in place: no sync failure; tried again next sync.
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not remove nftables mode's tables yet; trying again after the next sync")
        }
    }
    Ok(())
}

/// Builds a fresh handle (the periodic check runs on its own thread).
pub type NftFactory = Arc<dyn Fn() -> Box<dyn NftKernel> + Send + Sync>;

/// Runs the real `nft`.
#[derive(Debug, Default, Clone)]
pub struct SystemNft;

/// The script line an `nft` error names (`/dev/stdin:12:5-20: Error: ...`).
pub fn failing_line<'a>(stderr: &str, script: &'a str) -> Option<&'a str> {
    let at = stderr.find("stdin:")?;
    let n: usize = stderr[at + 6..].split(':').next()?.trim().parse().ok()?;
    script.lines().nth(n.checked_sub(1)?)
}

impl NftKernel for SystemNft {
    fn apply(&mut self, script: &str) -> Result<()> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (is the nftables package installed?)")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = stdin.write_all(script.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().context("waiting for nft")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr
                .lines()
                .find(|l| l.contains("Error"))
                .unwrap_or("")
                .trim();
            let line = failing_line(&stderr, script)
                .map(|l| {
                    let l: String = l.chars().take(300).collect();
                    format!(" (script line: {l})")
                })
                .unwrap_or_default();
            bail!("nft -f failed ({}): {first}{line}", out.status);
        }
        written.context("writing the script to nft")
    }

    fn list(&mut self, family: Family, table: &str) -> Result<Option<TableListing>> {
        super::nft_dump::dump_table(family, table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_failing_line() {
        let script = "add table ip t\nadd chain ip t c\nadd rule ip t c bogus\n";
        let stderr = "/dev/stdin:3:17-21: Error: syntax error, unexpected string\nadd rule ip t c bogus\n                ^^^^^";
        assert_eq!(failing_line(stderr, script), Some("add rule ip t c bogus"));
        assert_eq!(failing_line("Error: Could not process rule", script), None);
    }
}
