//! The cluster description: one TOML file from which every boot file is
//! rendered. Parsing is strict (unknown keys are errors, so a typo never
//! silently falls back to a default) and [`Description::validate`]
//! cross-checks what serde cannot: unique MACs, IPs, names and node ids,
//! addresses inside the subnet, the server address set.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{NfsrootError, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    pub cluster: ClusterSection,
    pub server: ServerSection,
    pub network: NetworkSection,
    #[serde(default)]
    pub boot: BootSection,
    pub image: ImageSection,
    #[serde(default)]
    pub krgd: KrgdSection,
    #[serde(default, rename = "node")]
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// krg session id: every node of the cluster boots with `session_id=` this.
    pub session_id: u32,
    /// DNS domain of the nodes (`node1.<domain>` in /etc/hosts, DHCP option).
    pub domain: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address of the boot server: DHCP, TFTP and NFS are all served from it.
    pub address: Option<Ipv4Addr>,
    /// Host name of the server in the nodes' /etc/hosts.
    #[serde(default = "default_server_name")]
    pub name: String,
    /// Interface dnsmasq binds to (optional).
    pub interface: Option<String>,
    /// Directory the TFTP server serves (the rendered `tftp/` tree is meant to
    /// be copied or bind-mounted there, or `--out` chosen so that it is).
    #[serde(default = "default_tftp_root")]
    pub tftp_root: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// `A.B.C.D/prefix`.
    pub subnet: String,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Loader {
    /// DHCP hands out iPXE, which then loads the node's iPXE menu.
    #[default]
    Ipxe,
    /// DHCP hands out a GRUB network image, which loads the node's grub.cfg.
    Grub,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootSection {
    pub loader: Loader,
    /// Kernel and initrd, relative to the TFTP root.
    pub kernel: String,
    pub initrd: String,
    /// Copy the newest /boot/vmlinuz-* and its initrd.img-* from the boot
    /// image to `kernel` and `initrd` under the rendered TFTP tree.
    pub kernel_from_image: bool,
    /// Extra kernel arguments, appended after the krg ones.
    pub append: String,
    /// Seconds the boot menu waits before booting the default entry.
    pub timeout: u32,
    /// Loader files handed out by DHCP, relative to the TFTP root.
    pub ipxe_bios: String,
    pub ipxe_efi: String,
    pub grub_bios: String,
    pub grub_efi: String,
}

impl Default for BootSection {
    fn default() -> Self {
        BootSection {
            loader: Loader::Ipxe,
            kernel: "krg/vmlinuz".into(),
            initrd: "krg/initrd.img".into(),
            kernel_from_image: true,
            append: String::new(),
            timeout: 5,
            ipxe_bios: "ipxe/undionly.kpxe".into(),
            ipxe_efi: "ipxe/ipxe.efi".into(),
            grub_bios: "grub/i386-pc/core.0".into(),
            grub_efi: "grub/x86_64-efi/core.efi".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RootMode {
    /// Each node boots its own writable clone of the image, named after the node.
    #[default]
    Clone,
    /// All nodes boot the same read-only image version; per-node read-write
    /// directories (tmp, var, root, ...) are NFS-mounted over it.
    Shared,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Directory holding images, versions and clones (`nfsroot image --root`).
    pub root: PathBuf,
    /// The image version nodes boot (`base@2`); clones are made from it.
    pub boot: String,
    #[serde(default)]
    pub mode: RootMode,
    /// Shared mode: directories each node gets read-write, kept on the server
    /// under `<root>/.state/<node>/<dir>`.
    #[serde(default = "default_rw_dirs")]
    pub rw_dirs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KrgdSection {
    pub port: u16,
    pub cluster_key_file: PathBuf,
    pub heartbeat_ms: Option<u64>,
    pub failure_timeout_ms: Option<u64>,
    pub max_voters: Option<usize>,
    pub data_dir: Option<PathBuf>,
}

impl Default for KrgdSection {
    fn default() -> Self {
        KrgdSection {
            port: 7600,
            cluster_key_file: krg_proto::DEFAULT_CLUSTER_KEY.into(),
            heartbeat_ms: None,
            failure_timeout_ms: None,
            max_voters: None,
            data_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub node_id: u32,
}

fn default_server_name() -> String {
    "bootserver".into()
}

fn default_tftp_root() -> PathBuf {
    PathBuf::from("/srv/krg/tftp")
}

fn default_rw_dirs() -> Vec<String> {
    vec!["tmp".into(), "var".into(), "root".into()]
}

/// An IPv4 subnet, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Option<Subnet> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.trim().parse().ok()?;
        let prefix: u8 = p.trim().parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let sub = Subnet {
            network: addr,
            prefix,
        };
        // `10.0.0.5/24` is refused: a subnet names its network address.
        (u32::from(addr) & sub.mask_bits() == u32::from(addr)).then_some(sub)
    }

    fn mask_bits(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask_bits())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask_bits())
    }

    /// A usable host address of this subnet (not the network or broadcast address).
    pub fn holds_host(&self, ip: Ipv4Addr) -> bool {
        let inside = u32::from(ip) & self.mask_bits() == u32::from(self.network);
        inside && (self.prefix >= 31 || (ip != self.network && ip != self.broadcast()))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Normalise a MAC address to lower-case `aa:bb:cc:dd:ee:ff`; `-` separators accepted.
pub fn normalise_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// Host names as RFC 1123 labels: letters, digits, '-', not starting or ending with '-'.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Image names and versions: `NAME` or `NAME@V`.
pub fn valid_image_name(name: &str) -> bool {
    let (base, version) = match name.split_once('@') {
        Some((b, v)) => (b, Some(v)),
        None => (name, None),
    };
    let base_ok = !base.is_empty()
        && !base.starts_with('.')
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    base_ok && version.is_none_or(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
}

impl Description {
    pub fn parse(text: &str, path: &Path) -> Result<Description> {
        let desc: Description = toml::from_str(text).map_err(|e| NfsrootError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        desc.validate()?;
        Ok(desc)
    }

    pub fn load(path: &Path) -> Result<Description> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NfsrootError::io(format!("reading {}", path.display()), e))?;
        Description::parse(&text, path)
    }

    pub fn subnet(&self) -> Subnet {
        // validate() has checked it; this fallback is never reached on a validated description.
        Subnet::parse(&self.network.subnet).unwrap_or(Subnet {
            network: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        })
    }

    pub fn server_address(&self) -> Ipv4Addr {
        self.server.address.unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Every cross-field rule; the first violation is returned, naming the
    /// field and, for nodes, the node.
    pub fn validate(&self) -> Result<()> {
        if self.cluster.domain.is_empty() || !self.cluster.domain.split('.').all(valid_hostname) {
            return Err(NfsrootError::invalid(
                "cluster.domain",
                None,
                format!("{:?} is not a DNS domain", self.cluster.domain),
            ));
        }
        if !valid_hostname(&self.server.name) {
            return Err(NfsrootError::invalid(
                "server.name",
                None,
                format!("{:?} is not a valid host name", self.server.name),
            ));
        }
        let subnet = Subnet::parse(&self.network.subnet).ok_or_else(|| {
            NfsrootError::invalid(
                "network.subnet",
                None,
                format!("{:?} is not a subnet like 10.0.0.0/24", self.network.subnet),
            )
        })?;
        let server = self
            .server
            .address
            .ok_or_else(|| NfsrootError::invalid("server.address", None, "is not set"))?;
        if !subnet.holds_host(server) {
            return Err(NfsrootError::invalid(
                "server.address",
                None,
                format!("{server} is not a host address of {subnet}"),
            ));
        }
        if let Some(gw) = self.network.gateway {
            if !subnet.holds_host(gw) {
                return Err(NfsrootError::invalid(
                    "network.gateway",
                    None,
                    format!("{gw} is not a host address of {subnet}"),
                ));
            }
        }
        self.validate_paths()?;
        self.validate_nodes(subnet, server)
    }

    fn validate_paths(&self) -> Result<()> {
        let dotdot = self
            .image
            .root
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
        if !self.image.root.is_absolute() || dotdot {
            return Err(NfsrootError::invalid(
                "image.root",
                None,
                "must be an absolute path without '..'",
            ));
        }
        if !valid_image_name(&self.image.boot) {
            return Err(NfsrootError::invalid(
                "image.boot",
                None,
                format!("{:?} is not an image name like base@2", self.image.boot),
            ));
        }
        if !self.server.tftp_root.is_absolute() {
            return Err(NfsrootError::invalid(
                "server.tftp_root",
                None,
                "must be an absolute path",
            ));
        }
        if self
            .image
            .root
            .to_string_lossy()
            .contains(|c: char| c.is_whitespace() || c == ',' || c == '"')
        {
            return Err(NfsrootError::invalid(
                "image.root",
                None,
                "must not contain spaces, commas or quotes (it goes on the kernel command line)",
            ));
        }
        if self.image.mode == RootMode::Shared {
            for (i, d) in self.image.rw_dirs.iter().enumerate() {
                // Plain names only: they become systemd mount unit names unescaped.
                if d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(NfsrootError::invalid(
                        format!("image.rw_dirs[{i}]"),
                        None,
                        format!("{d:?} must be a top-level directory name like var"),
                    ));
                }
            }
        }
        for (field, v) in [
            ("boot.kernel", &self.boot.kernel),
            ("boot.initrd", &self.boot.initrd),
        ] {
            if v.is_empty()
                || v.starts_with('/')
                || v.split('/').any(|c| c == "..")
                || v.contains(char::is_whitespace)
            {
                return Err(NfsrootError::invalid(
                    field,
                    None,
                    format!("{v:?} must be a path relative to the TFTP root"),
                ));
            }
        }
        if self.krgd.port == 0 {
            return Err(NfsrootError::invalid("krgd.port", None, "must not be 0"));
        }
        Ok(())
    }

    fn validate_nodes(&self, subnet: Subnet, server: Ipv4Addr) -> Result<()> {
        let mut names: HashMap<&str, &str> = HashMap::new();
        let mut macs: HashMap<String, &str> = HashMap::new();
        let mut ips: HashMap<Ipv4Addr, &str> = HashMap::new();
        let mut ids: HashMap<u32, &str> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let who = Some(n.name.as_str());
            if !valid_hostname(&n.name) {
                return Err(NfsrootError::invalid(
                    format!("node[{i}].name"),
                    who,
                    "is not a valid host name (letters, digits, '-')",
                ));
            }
            let image_base = self.image.boot.split('@').next().unwrap_or_default();
            if n.name == image_base {
                return Err(NfsrootError::invalid(
                    format!("node[{i}].name"),
                    who,
                    format!(
                        "is the name of the boot image {image_base}; clones are named after nodes"
                    ),
                ));
            }
            if let Some(other) = names.insert(&n.name, &n.name) {
                return Err(NfsrootError::invalid(
                    format!("node[{i}].name"),
                    who,
                    format!("name already used by node {other}"),
                ));
            }
            let mac = normalise_mac(&n.mac).ok_or_else(|| {
                NfsrootError::invalid(
                    format!("node[{i}].mac"),
                    who,
                    format!("{:?} is not a MAC address like 52:54:00:12:34:56", n.mac),
                )
            })?;
            if let Some(other) = macs.insert(mac.clone(), &n.name) {
                return Err(NfsrootError::invalid(
                    format!("node[{i}].mac"),
                    who,
                    format!("{mac} is also the MAC of node {other}"),
                ));
            }
            if !subnet.holds_host(n.ip) {
                return Err(NfsrootError::invalid(
                    format!("node[{i}].ip"),
                    who,
                    format!("{} is not a host address of {subnet}", n.ip),
                ));
            }
            if n.ip == server {
                return Err(NfsrootError::invalid(
                    format!("node[{i}].ip"),
                    who,
                    format!("{} is the server's address", n.ip),
                ));
            }
            if let Some(other) = ips.insert(n.ip, &n.name) {
                return Err(NfsrootError::invalid(
                    format!("node[{i}].ip"),
                    who,
                    format!("{} is also the IP of node {other}", n.ip),
                ));
            }
            if let Some(other) = ids.insert(n.node_id, &n.name) {
                return Err(NfsrootError::invalid(
                    format!("node[{i}].node_id"),
                    who,
                    format!("{} is also the node_id of node {other}", n.node_id),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
session_id = 7
domain = "krg.lan"
[server]
address = "10.0.0.1"
[network]
subnet = "10.0.0.0/24"
[image]
root = "/srv/krg/images"
boot = "base@1"
[[node]]
name = "n1"
mac = "52:54:00:00:00:01"
ip = "10.0.0.11"
node_id = 1
[[node]]
name = "n2"
mac = "52:54:00:00:00:02"
ip = "10.0.0.12"
node_id = 2
"#;

    fn err(text: &str) -> String {
        Description::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_description_parses() {
        let d = Description::parse(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!(d.nodes.len(), 2);
        assert_eq!(d.subnet().netmask(), Ipv4Addr::new(255, 255, 255, 0));
    }

    #[test]
    fn errors_name_field_and_node() {
        let e = err(&GOOD.replace("52:54:00:00:00:02", "52:54:00:00:00:01"));
        assert_eq!(
            e,
            "node n2: node[1].mac: 52:54:00:00:00:01 is also the MAC of node n1"
        );
        let e = err(&GOOD.replace("10.0.0.12", "10.0.0.11"));
        assert!(e.starts_with("node n2: node[1].ip:"), "{e}");
        let e = err(&GOOD.replace("node_id = 2", "node_id = 1"));
        assert!(e.starts_with("node n2: node[1].node_id:"), "{e}");
        let e = err(&GOOD.replace("10.0.0.12", "10.0.1.12"));
        assert!(e.contains("not a host address of 10.0.0.0/24"), "{e}");
        let e = err(&GOOD.replace("address = \"10.0.0.1\"", ""));
        assert_eq!(e, "server.address: is not set");
        let e = err(&GOOD.replace("52:54:00:00:00:02", "52:54:00:00:02"));
        assert!(e.contains("node[1].mac"), "{e}");
        let e = err(&GOOD.replace("10.0.0.0/24", "10.0.0.1/24"));
        assert!(e.starts_with("network.subnet:"), "{e}");
        let e = err(&GOOD.replace("name = \"n2\"", "name = \"base\""));
        assert!(
            e.starts_with("node base: node[1].name: is the name of the boot image"),
            "{e}"
        );
        let e = err(&GOOD.replace("[image]", "[image]\nbogus = 1"));
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn subnet_and_mac_helpers() {
        let s = Subnet::parse("192.168.4.0/22").unwrap();
        assert_eq!(s.broadcast(), Ipv4Addr::new(192, 168, 7, 255));
        assert!(s.holds_host(Ipv4Addr::new(192, 168, 5, 1)));
        assert!(!s.holds_host(Ipv4Addr::new(192, 168, 4, 0)));
        assert_eq!(
            normalise_mac("52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert!(
            valid_image_name("base@12") && !valid_image_name("base@") && !valid_image_name("../x")
        );
    }
}
