//! `nfsroot`: the command line. Thin: parse, call the library, print.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use nfsroot::image::{BuildOptions, BuildSource, Kind, Mechanism, Store};
use nfsroot::nodes::NewNode;
use nfsroot::output::{self, Outcome};
use nfsroot::render::{self, DhcpServer, RenderOptions};
use nfsroot::{check, Description};

mod lab_cmd;
mod manpage;

#[derive(Parser)]
#[command(name = "nfsroot", version, about = "Describe a diskless krg cluster once; render, check and maintain its DHCP, TFTP, NFS and images", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

const LONG_ABOUT: &str = "\
Describe a diskless krg cluster once, in one TOML file, and render everything
its nodes boot from: dhcpd.conf or dnsmasq.conf, the TFTP tree with per-node
iPXE and GRUB menus (node_id= session_id= root=/dev/nfs nfsroot=...), NFS
exports, the image's fstab and hosts, and one krgd.toml per node. Manage the
images too: debootstrap builds, read-only versions, cheap per-node clones.

  nfsroot init cluster.toml
  nfsroot render cluster.toml --out /srv/krg [--diff]
  nfsroot check cluster.toml --out /srv/krg
  nfsroot image build base --suite bookworm --krg-bin-dir target/release
  nfsroot image snapshot base
  nfsroot image clone base@1 node1
  nfsroot nodes add cluster.toml node3 52:54:00:00:00:03 10.0.0.13 --out /srv/krg
  nfsroot serve cluster.toml --out /srv/krg
  nfsroot boot-test cluster.toml node1 --out /srv/krg";

#[derive(Subcommand)]
enum Cmd {
    /// Write a commented example description.
    Init {
        /// File to create (refused if it exists).
        file: PathBuf,
    },
    /// Render every file of the description under --out (and into node clones).
    Render(RenderArgs),
    /// Validate the description and the rendered DHCP file with the daemon's own checker.
    Check(RenderArgs),
    /// Build, version, clone and list images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Add or remove nodes in the description, then render again.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Run dnsmasq (DHCP + TFTP) and NFS-Ganesha for a rendered description, in the foreground.
    #[command(long_about = lab_cmd::SERVE_ABOUT)]
    Serve(lab_cmd::ServeArgs),
    /// Boot nodes in QEMU VMs on a private bridge and report each step until they join.
    #[command(long_about = lab_cmd::BOOT_TEST_ABOUT)]
    BootTest(lab_cmd::BootTestArgs),
}

#[derive(Args, Clone)]
struct RenderArgs {
    /// The cluster description.
    file: PathBuf,
    /// Directory the files are rendered into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// DHCP server to render for.
    #[arg(long, value_enum, default_value_t = DhcpFlag::Isc)]
    dhcp: DhcpFlag,
    /// Show a unified diff of what would change; write nothing.
    #[arg(long)]
    diff: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DhcpFlag {
    /// ISC dhcpd (isc-dhcp-server): dhcp/dhcpd.conf
    Isc,
    /// dnsmasq (DHCP + TFTP): dhcp/dnsmasq.conf
    Dnsmasq,
}

#[derive(Args, Clone)]
struct RootArg {
    /// Image root directory.
    #[arg(
        long = "root",
        value_name = "DIR",
        env = "NFSROOT_IMAGES",
        default_value = "/srv/krg/images"
    )]
    root: PathBuf,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build an image with debootstrap (or from a prepared tree), krg installed in it.
    Build {
        /// Name of the new image (letters, digits, '-', '_', '.').
        name: String,
        #[command(flatten)]
        root: RootArg,
        /// Debian suite to debootstrap.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Mirror URL [default: the first apt source of this system carrying the suite].
        #[arg(long)]
        mirror: Option<String>,
        /// debootstrap variant.
        #[arg(long, default_value = "minbase")]
        variant: String,
        /// Extra packages, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "systemd-sysv,nfs-common,fuse3,iproute2,linux-image-amd64,initramfs-tools,zstd"
        )]
        include: Vec<String>,
        /// Copy this prepared root tree instead of running debootstrap.
        #[arg(long, value_name = "DIR")]
        from_tree: Option<PathBuf>,
        /// Directory with the krg binaries (krgd, krgadm, ...) to install.
        #[arg(long, value_name = "DIR")]
        krg_bin_dir: Option<PathBuf>,
        /// A rendered <out>/root tree (fstab, hosts, krgd.toml) to install.
        #[arg(long, value_name = "DIR")]
        config: Option<PathBuf>,
    },
    /// Install the current krg binaries (and rendered files) into an existing image.
    Update {
        /// The image (made by `image build`; not a version or a clone).
        name: String,
        #[command(flatten)]
        root: RootArg,
        /// Directory with the krg binaries (krgd, krgadm, ...) to install.
        #[arg(long, value_name = "DIR")]
        krg_bin_dir: Option<PathBuf>,
        /// A rendered <out>/root tree (fstab, hosts, krgd.toml) to install.
        #[arg(long, value_name = "DIR")]
        config: Option<PathBuf>,
    },
    /// Make the next read-only version NAME@N of an image.
    Snapshot {
        /// The image to version.
        name: String,
        #[command(flatten)]
        root: RootArg,
    },
    /// Make a writable clone of an image or version, by the cheapest mechanism.
    Clone {
        /// Image or version to clone (base, base@2).
        source: String,
        /// Name of the clone (a node's clone is named after the node).
        name: String,
        #[command(flatten)]
        root: RootArg,
        /// Force a mechanism instead of the cheapest available.
        #[arg(long, value_enum)]
        mechanism: Option<Mechanism>,
    },
    /// List images, versions and clones.
    Ls {
        #[command(flatten)]
        root: RootArg,
        /// One JSON object per line instead of columns.
        #[arg(long)]
        json: bool,
    },
    /// Mount an overlay clone again (overlays do not survive a server reboot).
    Mount {
        /// The overlay clone.
        name: String,
        #[command(flatten)]
        root: RootArg,
    },
    /// Remove an image, version or clone (refused while something was made from it).
    Rm {
        /// The image, version or clone.
        name: String,
        #[command(flatten)]
        root: RootArg,
    },
}

#[derive(Subcommand)]
enum NodesCmd {
    /// Add a node to the description and render again.
    Add {
        /// The cluster description to edit.
        file: PathBuf,
        /// Host name of the node.
        name: String,
        /// MAC address of its boot interface (52:54:00:12:34:56).
        mac: String,
        /// Its fixed IPv4 address, inside the description's subnet.
        ip: Ipv4Addr,
        /// node_id [default: the smallest unused, from 1].
        #[arg(long)]
        node_id: Option<u32>,
        #[command(flatten)]
        render: ReRender,
    },
    /// Remove a node (by name or node_id) from the description and render again.
    Del {
        /// The cluster description to edit.
        file: PathBuf,
        /// Name or node_id of the node to remove.
        node: String,
        #[command(flatten)]
        render: ReRender,
    },
}

#[derive(Args, Clone)]
struct ReRender {
    /// Directory the files are rendered into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = DhcpFlag::Isc)]
    dhcp: DhcpFlag,
    /// Clone mode: also make the new node's clone of the boot image if it exists.
    #[arg(long)]
    clone: bool,
}

fn main() -> ExitCode {
    krg_clidoc::intercept::<Cli>(&manpage::PAGE);
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nfsroot: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init { file } => init(&file),
        Cmd::Render(a) => {
            let d = Description::load(&a.file)?;
            render_cmd(&d, &a.out, a.dhcp, a.diff)
        }
        Cmd::Check(a) => check_cmd(&a),
        Cmd::Image(c) => image_cmd(c),
        Cmd::Nodes(c) => nodes_cmd(c),
        Cmd::BootTest(a) => lab_cmd::boot_test(a),
        Cmd::Serve(a) => lab_cmd::serve(a),
    }
}

fn init(file: &Path) -> Result<()> {
    if file.exists() {
        bail!("{} exists; not overwriting it", file.display());
    }
    nfsroot::atomic::write_atomic(file, nfsroot::example::EXAMPLE.as_bytes(), 0o644)?;
    println!(
        "wrote {}: edit it, then `nfsroot render {} --out DIR`",
        file.display(),
        file.display()
    );
    Ok(())
}

fn dhcp_kind(f: DhcpFlag) -> DhcpServer {
    match f {
        DhcpFlag::Isc => DhcpServer::Isc,
        DhcpFlag::Dnsmasq => DhcpServer::Dnsmasq,
    }
}

/// An absolute path with `.` and `..` resolved lexically.
fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(nfsroot::paths::absolute(p)?)
}

fn render_cmd(d: &Description, out: &Path, dhcp: DhcpFlag, diff: bool) -> Result<()> {
    let out = absolute(out)?;
    let plan = render::plan(
        d,
        &RenderOptions {
            out: out.clone(),
            dhcp: dhcp_kind(dhcp),
        },
    );
    if diff {
        let (text, o) = output::diff(&plan, &out, &d.image.root)?;
        print!("{text}");
        if o.is_noop() {
            println!("nothing would change ({} files up to date)", o.unchanged);
        }
    } else {
        let o = output::apply(&plan, &out, &d.image.root)?;
        report(&o);
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
    Ok(())
}

fn report(o: &Outcome) {
    if o.is_noop() {
        println!("nothing changed ({} files up to date)", o.unchanged);
        return;
    }
    for (what, list) in [
        ("created", &o.created),
        ("changed", &o.changed),
        ("removed", &o.removed),
        ("new directory", &o.dirs_created),
    ] {
        for p in list {
            println!("{what} {}", p.display());
        }
    }
    println!(
        "{} created, {} changed, {} removed, {} unchanged",
        o.created.len(),
        o.changed.len(),
        o.removed.len(),
        o.unchanged
    );
}

fn check_cmd(a: &RenderArgs) -> Result<()> {
    let d = Description::load(&a.file)?;
    println!(
        "{}: description is consistent ({} nodes)",
        a.file.display(),
        d.nodes.len()
    );
    let out = absolute(&a.out)?;
    let kind = dhcp_kind(a.dhcp);
    let plan = render::plan(
        &d,
        &RenderOptions {
            out: out.clone(),
            dhcp: kind,
        },
    );
    let (_, o) = output::diff(&plan, &out, &d.image.root)?;
    for line in check::rendered_tree(&plan)?.lines {
        println!("{line}");
    }
    if !o.is_noop() {
        bail!(
            "{} is out of date: {} files would be created, {} changed, {} removed (see `nfsroot render --diff`)",
            out.display(),
            o.created.len(),
            o.changed.len(),
            o.removed.len()
        );
    }
    println!("{}: up to date with the description", out.display());
    Ok(())
}

fn image_cmd(c: ImageCmd) -> Result<()> {
    match c {
        ImageCmd::Build {
            name,
            root,
            suite,
            mirror,
            variant,
            include,
            from_tree,
            krg_bin_dir,
            config,
        } => {
            let store = Store::open(&absolute(&root.root)?)?;
            let include = include.into_iter().filter(|s| !s.is_empty()).collect();
            let source = match from_tree {
                Some(t) => BuildSource::Tree(t),
                None => BuildSource::Debootstrap {
                    suite,
                    mirror,
                    variant,
                    include,
                },
            };
            let opts = BuildOptions {
                source,
                krg_bin_dir,
                config_tree: config,
            };
            let spinner = spinner();
            let path = store.build(&name, &opts, &mut |m| {
                if let Some(pb) = &spinner {
                    pb.println(format!("nfsroot: {m}"));
                    pb.set_message(m.to_string());
                }
            });
            if let Some(pb) = spinner {
                pb.finish_and_clear();
            }
            let path = path?;
            println!("built image {name} at {}", path.display());
        }
        ImageCmd::Update {
            name,
            root,
            krg_bin_dir,
            config,
        } => {
            if krg_bin_dir.is_none() && config.is_none() {
                bail!("nothing to update: pass --krg-bin-dir and/or --config");
            }
            let store = Store::open(&absolute(&root.root)?)?;
            let opts = BuildOptions {
                source: BuildSource::Tree(PathBuf::new()),
                krg_bin_dir,
                config_tree: config,
            };
            store.update(&name, &opts, &mut |m| println!("nfsroot: {m}"))?;
            println!("updated image {name}; `nfsroot image snapshot {name}` versions it");
        }
        ImageCmd::Snapshot { name, root } => {
            let store = Store::open(&absolute(&root.root)?)?;
            let spinner = spinner();
            if let Some(pb) = &spinner {
                pb.set_message(format!("making the next version of {name}"));
            }
            let m = store.snapshot(&name);
            if let Some(pb) = spinner {
                pb.finish_and_clear();
            }
            let m = m?;
            let ro = if m.enforced_read_only {
                "read-only"
            } else {
                "read-only by convention: this file system has no reflink, so clones are overlays, which would inherit immutable flags"
            };
            println!("made {} ({}, {ro})", m.name, m.mechanism);
        }
        ImageCmd::Clone {
            source,
            name,
            root,
            mechanism,
        } => {
            let store = Store::open(&absolute(&root.root)?)?;
            let m = store.clone_image(&source, &name, mechanism)?;
            println!("cloned {source} to {} using {}", m.name, m.mechanism);
            if let Some(line) = m.fstab_line {
                println!("the overlay is not remounted after a reboot: add to the server's /etc/fstab\n  {line}\nor run `nfsroot image mount {}`", m.name);
            }
        }
        ImageCmd::Ls { root, json } => {
            let store = Store::open(&absolute(&root.root)?)?;
            ls(&store, json)?;
        }
        ImageCmd::Mount { name, root } => {
            let store = Store::open(&absolute(&root.root)?)?;
            if store.mount(&name)? {
                println!("mounted {name}");
            } else {
                println!("{name} is already mounted");
            }
        }
        ImageCmd::Rm { name, root } => {
            let store = Store::open(&absolute(&root.root)?)?;
            store.remove(&name)?;
            println!("removed {name}");
        }
    }
    Ok(())
}

/// A spinner on stderr when it is a terminal; nothing otherwise.
fn spinner() -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(pb)
}

fn ls(store: &Store, json: bool) -> Result<()> {
    let entries = store.list()?;
    if json {
        for e in &entries {
            let v = serde_json::json!({ "name": e.name, "path": store.path(&e.name), "meta": e.meta, "mounted": e.mounted });
            println!("{v}");
        }
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<16} {:<26} STATE",
        "NAME", "KIND", "ORIGIN", "MECHANISM"
    );
    for e in entries {
        let state = match (e.meta.kind, e.meta.mechanism) {
            (Kind::Clone, Some(Mechanism::Overlay)) if !e.mounted => {
                "not mounted (nfsroot image mount)"
            }
            (Kind::Version, _) if e.meta.enforced_read_only => "read-only",
            (Kind::Version, _) => "read-only by convention",
            _ => "writable",
        };
        let mech = e
            .meta
            .mechanism
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<8} {:<16} {:<26} {state}",
            e.name,
            e.meta.kind.to_string(),
            e.meta.origin.as_deref().unwrap_or("-"),
            mech
        );
    }
    Ok(())
}

fn nodes_cmd(c: NodesCmd) -> Result<()> {
    let (file, r, desc) = match c {
        NodesCmd::Add {
            file,
            name,
            mac,
            ip,
            node_id,
            render,
        } => {
            let (desc, id) = nfsroot::nodes::add(
                &file,
                &NewNode {
                    name: name.clone(),
                    mac,
                    ip,
                    node_id,
                },
            )?;
            println!(
                "added node {name} with node_id {id} to {} (krgadm nodes add uses the same id)",
                file.display()
            );
            if render.clone && desc.image.mode == nfsroot::desc::RootMode::Clone {
                let store = Store::open(&desc.image.root)?;
                if store.meta(&desc.image.boot).is_ok() && !store.path(&name).exists() {
                    let m = store.clone_image(&desc.image.boot, &name, None)?;
                    println!("cloned {} to {name} using {}", desc.image.boot, m.mechanism);
                }
            }
            (file, render, desc)
        }
        NodesCmd::Del { file, node, render } => {
            let (desc, id) = nfsroot::nodes::del(&file, &node)?;
            println!("removed node {node} (node_id {id}) from {}; its clone, if any, is kept (nfsroot image rm)", file.display());
            (file, render, desc)
        }
    };
    let _ = file;
    render_cmd(&desc, &r.out, r.dhcp, false)
}
