//! DHCP server configuration: ISC dhcpd or dnsmasq, equivalent content.
//! Only the described nodes get an address (static hosts, no dynamic range),
//! and DHCP hands each one the boot loader, which then loads its menu by MAC.

use std::fmt::Write;

use super::Ctx;
use crate::desc::Loader;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhcpServer {
    #[default]
    Isc,
    Dnsmasq,
}

/// `/etc/dhcp/dhcpd.conf` for isc-dhcp-server.
pub fn isc(c: &Ctx) -> String {
    let d = c.d;
    let b = &d.boot;
    let mut s = String::new();
    let _ = writeln!(s, "# dhcpd.conf for krg session {} — rendered by nfsroot; edit the description and re-render.", d.cluster.session_id);
    let _ = writeln!(s, "authoritative;");
    let _ = writeln!(s, "option domain-name \"{}\";", d.cluster.domain);
    let _ = writeln!(
        s,
        "# RFC 4578 client system architecture (7 and 9: x86-64 UEFI)."
    );
    let _ = writeln!(s, "option arch code 93 = unsigned integer 16;");
    let _ = writeln!(s, "default-lease-time 86400;\nmax-lease-time 86400;\n");
    let _ = writeln!(s, "# No range: only the hosts below get an address.");
    let _ = writeln!(
        s,
        "subnet {} netmask {} {{",
        c.subnet.network,
        c.subnet.netmask()
    );
    let _ = writeln!(s, "  option subnet-mask {};", c.subnet.netmask());
    let _ = writeln!(s, "  option broadcast-address {};", c.subnet.broadcast());
    if let Some(gw) = d.network.gateway {
        let _ = writeln!(s, "  option routers {gw};");
    }
    if !d.network.dns.is_empty() {
        let list: Vec<String> = d.network.dns.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(s, "  option domain-name-servers {};", list.join(", "));
    }
    let _ = writeln!(s, "  next-server {};", c.server);
    let efi = "option arch = 00:07 or option arch = 00:09";
    match b.loader {
        Loader::Ipxe => {
            let _ = writeln!(
                s,
                "  if exists user-class and option user-class = \"iPXE\" {{"
            );
            let _ = writeln!(s, "    filename \"ipxe/boot.ipxe\";");
            let _ = writeln!(s, "  }} elsif {efi} {{\n    filename \"{}\";", b.ipxe_efi);
            let _ = writeln!(s, "  }} else {{\n    filename \"{}\";\n  }}", b.ipxe_bios);
        }
        Loader::Grub => {
            let _ = writeln!(s, "  if {efi} {{\n    filename \"{}\";", b.grub_efi);
            let _ = writeln!(s, "  }} else {{\n    filename \"{}\";\n  }}", b.grub_bios);
        }
    }
    let _ = writeln!(s, "}}");
    for n in &d.nodes {
        let _ = writeln!(s, "\n# node_id {}", n.node_id);
        let _ = writeln!(s, "host {} {{", n.name);
        let _ = writeln!(s, "  hardware ethernet {};", c.mac(n));
        let _ = writeln!(s, "  fixed-address {};", n.ip);
        let _ = writeln!(s, "  option host-name \"{}\";", n.name);
        let _ = writeln!(s, "}}");
    }
    s
}

/// `dnsmasq.conf` doing DHCP and TFTP (its DNS server is switched off).
pub fn dnsmasq(c: &Ctx) -> String {
    let d = c.d;
    let b = &d.boot;
    let mut s = String::new();
    let _ = writeln!(s, "# dnsmasq.conf for krg session {} — rendered by nfsroot; edit the description and re-render.", d.cluster.session_id);
    let _ = writeln!(
        s,
        "# DHCP and TFTP only: port=0 switches dnsmasq's DNS server off."
    );
    let _ = writeln!(s, "port=0");
    if let Some(i) = &d.server.interface {
        let _ = writeln!(s, "interface={i}\nbind-interfaces");
    }
    let _ = writeln!(s, "domain={}", d.cluster.domain);
    let _ = writeln!(s, "# 'static': only the hosts below get an address.");
    let _ = writeln!(
        s,
        "dhcp-range={},static,{}",
        c.subnet.network,
        c.subnet.netmask()
    );
    let _ = writeln!(s, "dhcp-authoritative");
    if let Some(gw) = d.network.gateway {
        let _ = writeln!(s, "dhcp-option=option:router,{gw}");
    }
    if !d.network.dns.is_empty() {
        let list: Vec<String> = d.network.dns.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(s, "dhcp-option=option:dns-server,{}", list.join(","));
    }
    let _ = writeln!(s, "enable-tftp\ntftp-root={}", d.server.tftp_root.display());
    let _ = writeln!(
        s,
        "dhcp-match=set:efi64,option:client-arch,7\ndhcp-match=set:efi64,option:client-arch,9"
    );
    match b.loader {
        Loader::Ipxe => {
            let _ = writeln!(s, "dhcp-userclass=set:ipxe,iPXE");
            let _ = writeln!(s, "dhcp-boot=tag:ipxe,ipxe/boot.ipxe,,{}", c.server);
            let _ = writeln!(
                s,
                "dhcp-boot=tag:!ipxe,tag:efi64,{},,{}",
                b.ipxe_efi, c.server
            );
            let _ = writeln!(
                s,
                "dhcp-boot=tag:!ipxe,tag:!efi64,{},,{}",
                b.ipxe_bios, c.server
            );
        }
        Loader::Grub => {
            let _ = writeln!(s, "dhcp-boot=tag:efi64,{},,{}", b.grub_efi, c.server);
            let _ = writeln!(s, "dhcp-boot=tag:!efi64,{},,{}", b.grub_bios, c.server);
        }
    }
    for n in &d.nodes {
        let _ = writeln!(
            s,
            "# node_id {}\ndhcp-host={},{},{}",
            n.node_id,
            c.mac(n),
            n.name,
            n.ip
        );
    }
    s
}
