//! Rendering: the description becomes a [`Plan`] — every file, with its
//! absolute destination, contents and mode — without touching the disk.
//! Writing, diffing and checking all work from the same plan, so `--diff`
//! shows exactly what `render` would write.

mod boot;
mod dhcp;
mod image;
mod krgd;
mod loaders;
mod nfs;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::desc::{normalise_mac, Description, Node, RootMode, Subnet};

pub use dhcp::DhcpServer;
pub use loaders::IPXE_DIR;

/// The NFS-Ganesha configuration, under `--out`.
pub const GANESHA_CONF: &str = "nfs/ganesha.conf";
/// NFS-Ganesha's NFSv4 recovery directory, under `--out` (made by `serve`).
pub const GANESHA_RECOVERY: &str = "nfs/ganesha-recovery";

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Absolute destination, under `--out` or the image root.
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
    /// What a daemon's checker can say about it (`nfsroot check`).
    pub role: FileRole,
}

/// Files whose daemon has a checker of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileRole {
    /// The DHCP server's configuration.
    Dhcp(DhcpServer),
    /// A GRUB menu.
    GrubMenu,
    #[default]
    Other,
}

/// One directory to create if missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDir {
    pub path: PathBuf,
    pub mode: u32,
    /// When the directory is created, fill it with a copy of this one (a
    /// node's read-write /var starts as the image's /var).
    pub seed: Option<PathBuf>,
}

/// Everything a render produces.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub files: Vec<PlannedFile>,
    /// Directories that must exist (shared-mode state dirs, mount points).
    pub dirs: Vec<PlannedDir>,
    /// Things the admin should know that are not errors (missing clones, ...).
    pub notes: Vec<String>,
}

/// Options of one render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub out: PathBuf,
    pub dhcp: DhcpServer,
}

/// The values every renderer needs, computed once.
pub(crate) struct Ctx<'a> {
    pub d: &'a Description,
    pub subnet: Subnet,
    pub server: Ipv4Addr,
}

impl Ctx<'_> {
    /// Path, on the server, of the root file system `node` boots.
    pub fn node_root(&self, node: &Node) -> PathBuf {
        match self.d.image.mode {
            RootMode::Clone => self.d.image.root.join(&node.name),
            RootMode::Shared => self.d.image.root.join(&self.d.image.boot),
        }
    }

    /// Shared mode: server path of one of a node's read-write directories.
    pub fn state_dir(&self, node: &Node, dir: &str) -> PathBuf {
        self.d.image.root.join(".state").join(&node.name).join(dir)
    }

    /// The kernel command line of a node: krgd reads node_id= and session_id=
    /// from it, initramfs-tools mounts the NFS root from root= and nfsroot=.
    pub fn cmdline(&self, node: &Node) -> String {
        let rw = match self.d.image.mode {
            RootMode::Clone => "rw",
            RootMode::Shared => "ro",
        };
        let mut s = format!(
            "node_id={} session_id={} root=/dev/nfs nfsroot={}:{},vers=3,tcp ip=dhcp {rw}",
            node.node_id,
            self.d.cluster.session_id,
            self.server,
            self.node_root(node).display()
        );
        if !self.d.boot.append.trim().is_empty() {
            s.push(' ');
            s.push_str(self.d.boot.append.trim());
        }
        s
    }

    pub fn mac(&self, node: &Node) -> String {
        // Validated already; keep the raw text if normalisation ever failed.
        normalise_mac(&node.mac).unwrap_or_else(|| node.mac.clone())
    }
}

/// Render every file of the description.
pub fn plan(d: &Description, opts: &RenderOptions) -> Plan {
    let ctx = Ctx {
        d,
        subnet: d.subnet(),
        server: d.server_address(),
    };
    let out = &opts.out;
    let mut plan = Plan::default();
    let mut add_as = |rel: &str, contents: String, mode: u32, role: FileRole| {
        plan.files.push(PlannedFile {
            path: out.join(rel),
            contents: contents.into_bytes(),
            mode,
            role,
        });
    };
    let dhcp_role = FileRole::Dhcp(opts.dhcp);
    match opts.dhcp {
        DhcpServer::Isc => add_as("dhcp/dhcpd.conf", dhcp::isc(&ctx), 0o644, dhcp_role),
        DhcpServer::Dnsmasq => add_as("dhcp/dnsmasq.conf", dhcp::dnsmasq(&ctx), 0o644, dhcp_role),
    }
    for (rel, text) in boot::files(&ctx) {
        let role = if rel.starts_with("grub/grub.cfg") {
            FileRole::GrubMenu
        } else {
            FileRole::Other
        };
        add_as(&format!("tftp/{rel}"), text, 0o644, role);
    }
    let mut add =
        |rel: &str, contents: String, mode: u32| add_as(rel, contents, mode, FileRole::Other);
    add("nfs/exports", nfs::exports(&ctx), 0o644);
    add(
        GANESHA_CONF,
        nfs::ganesha(&ctx, &out.join(GANESHA_RECOVERY)),
        0o644,
    );
    add("root/etc/fstab", image::fstab(&ctx), 0o644);
    add("root/etc/hosts", image::hosts(&ctx), 0o644);
    add("root/etc/krg/krgd.toml", krgd::shared(&ctx), 0o644);
    if d.image.mode == RootMode::Shared {
        add(image::GENERATOR_PATH, image::generator(&ctx), 0o755);
    }
    for node in &d.nodes {
        add(
            &format!("nodes/{}/krgd.toml", node.name),
            krgd::node(&ctx, node),
            0o644,
        );
    }
    match loaders::files(&ctx) {
        Ok(files) => {
            for (rel, bytes) in files {
                plan.files.push(PlannedFile {
                    path: out.join("tftp").join(rel),
                    contents: bytes,
                    mode: 0o644,
                    role: FileRole::Other,
                });
            }
        }
        Err(note) => plan.notes.push(note),
    }
    if d.boot.kernel_from_image {
        match boot::kernel_from_image(&ctx) {
            Ok(files) => {
                for (rel, bytes) in files {
                    plan.files.push(PlannedFile {
                        path: out.join("tftp").join(rel),
                        contents: bytes,
                        mode: 0o644,
                        role: FileRole::Other,
                    });
                }
            }
            Err(note) => plan.notes.push(note),
        }
    }
    image::plan_node_roots(&ctx, &mut plan);
    plan
}

/// Is `path` inside `root` (lexically, after both are absolute)?
pub fn is_inside(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}
