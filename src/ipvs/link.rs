//! kube-ipvs0: the dummy link that holds every VIP as /32 (/128), so the node
//! accepts packets for them and IPVS (hooked on LOCAL_IN) sees them. Talks
//! rtnetlink; each call runs on its own small runtime in a scoped thread, so
//! it works from the sync loop's blocking section and from plain threads.

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{AddressMessageBuilder, Handle, LinkDummy};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const DUMMY_LINK: &str = "kube-ipvs0";

/// The link side of IPVS; faked in tests.
pub trait LinkKernel: Send {
    /// Creates the dummy link if missing (left DOWN, like upstream). True
    /// when it had to be created.
    fn ensure_link(&mut self) -> Result<bool>;
    /// Host addresses bound to the link; empty when it does not exist.
    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>>;
    fn add_address(&mut self, ip: IpAddr) -> Result<()>;
    fn del_address(&mut self, ip: IpAddr) -> Result<()>;
    /// Binds several addresses (one socket for all of them where it can).
    fn add_addresses(&mut self, ips: &[IpAddr]) -> Result<()> {
        ips.iter().try_for_each(|ip| self.add_address(*ip))
    }
    /// Unbinds several addresses (one socket for all of them where it can).
    fn del_addresses(&mut self, ips: &[IpAddr]) -> Result<()> {
        ips.iter().try_for_each(|ip| self.del_address(*ip))
    }
    /// Deletes the link (and with it its addresses) if present.
    fn delete_link(&mut self) -> Result<()>;
    /// Addresses on every other interface (no loopback, no IPv6 link-local):
    /// where NodePorts are served.
    fn host_addresses(&mut self) -> Result<BTreeSet<IpAddr>>;
}

/// Addresses a NodePort may be served on.
pub fn usable_host_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// The real rtnetlink implementation.
#[derive(Default)]
pub struct SystemLink;

fn run<T: Send>(f: impl AsyncFnOnce(Handle) -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .context("starting an rtnetlink runtime")?;
            rt.block_on(async {
                let (conn, handle, _) =
                    rtnetlink::new_connection().context("opening an rtnetlink socket")?;
                let task = tokio::spawn(conn);
                let r = f(handle).await;
                task.abort();
                r
            })
        })
        .join()
        .map_err(|_| anyhow!("rtnetlink thread panicked"))?
    })
}

async fn link_index(h: &Handle) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(DUMMY_LINK.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => {
            let named = l
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == DUMMY_LINK));
            Ok(named.then_some(l.header.index))
        }
        Ok(None) => Ok(None),
        // The kernel answers ENODEV for a name that does not exist.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(anyhow!("looking up {DUMMY_LINK}: {e}")),
    }
}

fn prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

impl LinkKernel for SystemLink {
    fn ensure_link(&mut self) -> Result<bool> {
        run(async |h: Handle| {
            if link_index(&h).await?.is_some() {
                return Ok(false);
            }
            h.link()
                .add(LinkDummy::new(DUMMY_LINK).build())
                .execute()
                .await
                .map_err(|e| {
                    anyhow!(
                        "creating dummy link {DUMMY_LINK}: {e} (is the dummy module available?)"
                    )
                })?;
            Ok(true)
        })
    }

    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>> {
        run(async |h: Handle| {
            let Some(idx) = link_index(&h).await? else {
                return Ok(BTreeSet::new());
            };
            let mut out = BTreeSet::new();
            let mut addrs = h.address().get().set_link_index_filter(idx).execute();
            while let Some(m) = addrs
                .try_next()
                .await
                .map_err(|e| anyhow!("listing addresses of {DUMMY_LINK}: {e}"))?
            {
                if m.header.index != idx {
                    continue;
                }
                for a in &m.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        out.insert(*ip);
                    }
                }
            }
            Ok(out)
        })
    }

    fn add_address(&mut self, ip: IpAddr) -> Result<()> {
        self.add_addresses(&[ip])
    }

    fn del_address(&mut self, ip: IpAddr) -> Result<()> {
        self.del_addresses(&[ip])
    }

    fn add_addresses(&mut self, ips: &[IpAddr]) -> Result<()> {
        if ips.is_empty() {
            return Ok(());
        }
        run(async |h: Handle| {
            let idx = link_index(&h)
                .await?
                .ok_or_else(|| anyhow!("{DUMMY_LINK} does not exist"))?;
            for ip in ips {
                match h.address().add(idx, *ip, prefix(ip)).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    Err(e) => return Err(anyhow!("binding {ip} to {DUMMY_LINK}: {e}")),
                }
            }
            Ok(())
        })
    }

    fn del_addresses(&mut self, ips: &[IpAddr]) -> Result<()> {
        if ips.is_empty() {
            return Ok(());
        }
        run(async |h: Handle| {
            let Some(idx) = link_index(&h).await? else {
                return Ok(());
            };
            for ip in ips {
                let msg = match ip {
                    IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                        .index(idx)
                        .address(*a, 32)
                        .build(),
                    IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                        .index(idx)
                        .address(*a, 128)
                        .build(),
                };
                match h.address().del(msg).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e))
                        if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                    Err(e) => return Err(anyhow!("unbinding {ip} from {DUMMY_LINK}: {e}")),
                }
            }
            Ok(())
        })
    }

    fn host_addresses(&mut self) -> Result<BTreeSet<IpAddr>> {
        run(async |h: Handle| {
            let ours = link_index(&h).await?;
            let mut out = BTreeSet::new();
            let mut addrs = h.address().get().execute();
            while let Some(m) = addrs
                .try_next()
                .await
                .map_err(|e| anyhow!("listing the node's addresses: {e}"))?
            {
                if Some(m.header.index) == ours {
                    continue;
                }
                for a in &m.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        if usable_host_address(ip) {
                            out.insert(*ip);
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    fn delete_link(&mut self) -> Result<()> {
        run(async |h: Handle| {
            let Some(idx) = link_index(&h).await? else {
                return Ok(());
            };
            h.link()
                .del(idx)
                .execute()
                .await
                .map_err(|e| anyhow!("deleting {DUMMY_LINK}: {e}"))
        })
    }
}
