//! The node's network identity, read over rtnetlink: the MAC address and
//! broadcast address of the interface that carries the listen address.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use krg_proto::cluster::Mac;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;

#[derive(Debug, Default, Clone, Copy)]
pub struct InterfaceInfo {
    pub index: Option<u32>,
    /// The interface's address (useful when listening on 0.0.0.0).
    pub addr: Option<IpAddr>,
    pub mac: Option<Mac>,
    pub broadcast: Option<Ipv4Addr>,
}

/// Find the interface that holds `ip` (or, for an unspecified address, the
/// first interface with a non-loopback IPv4 address). Failure to ask the
/// kernel is not fatal: the node just has no MAC to show.
pub async fn interface_for(ip: IpAddr) -> InterfaceInfo {
    match query(ip).await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read interface details over rtnetlink");
            InterfaceInfo::default()
        }
    }
}

async fn query(ip: IpAddr) -> Result<InterfaceInfo, String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    let conn_task = tokio::spawn(conn);
    let mut info = InterfaceInfo::default();
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(|e| e.to_string())? {
        let mut local = None;
        let mut broadcast = None;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(a) => local = Some(*a),
                AddressAttribute::Address(a) if local.is_none() => local = Some(*a),
                AddressAttribute::Broadcast(b) => broadcast = Some(*b),
                _ => {}
            }
        }
        let Some(local) = local else { continue };
        let matches = if ip.is_unspecified() {
            local.is_ipv4() && !local.is_loopback()
        } else {
            local == ip
        };
        if matches {
            info.index = Some(msg.header.index);
            info.addr = Some(local);
            info.broadcast = broadcast;
            break;
        }
    }
    if let Some(index) = info.index {
        let mut links = handle.link().get().match_index(index).execute();
        while let Some(msg) = links.try_next().await.map_err(|e| e.to_string())? {
            for attr in &msg.attributes {
                if let LinkAttribute::Address(bytes) = attr {
                    if let Ok(b) = <[u8; 6]>::try_from(bytes.as_slice()) {
                        if b != [0; 6] {
                            info.mac = Some(Mac(b));
                        }
                    }
                }
            }
        }
    }
    conn_task.abort();
    Ok(info)
}
