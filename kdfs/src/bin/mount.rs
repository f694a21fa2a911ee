//! mount.kdfs DIR MOUNTPOINT [-o OPTIONS]: the mount(8) helper and FUSE
//! client of kDFS. mount(8) runs it for `mount -t kdfs`; it mounts, then
//! keeps serving in the background until `umount MOUNTPOINT`.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use kdfs::client::{fs::KdfsFs, fuse_config, kmount, prepare, MountOptions, Prepared};

/// Mount the kDFS whose local part is DIR on MOUNTPOINT.
///
/// Options (-o, comma separated): socket=PATH (local krgd admin socket,
/// default /run/krg/krgd.sock), keyfile=PATH (cluster key, default
/// /etc/krg/cluster.key), timeo=S (how long to wait for the local krgd and
/// the root node to serve, default 30: nodes boot in any order),
/// attr_timeout=S and entry_timeout=S (how long the kernel keeps attributes
/// and names, 0..60, default 5; the owning node tells every mount of a
/// change before the change returns, so the next look anywhere sees it;
/// both 0: no caching), threads=N (FUSE
/// threads, default 2), readahead=KB (kernel read-ahead, default 1024),
/// nopassthrough (the client, not the kernel, does the I/O of local files),
/// noxattr (no extended attributes: spares a request before every write),
/// nolend (every create goes through krgd: no directory of the node is
/// borrowed to create files in it without a round trip),
/// nodes=ID@ADDR:PORT+... (override member addresses),
/// log=FILE, foreground (do not detach), ro/rw, suid/nosuid, dev/nodev,
/// exec/noexec (default nosuid,nodev,exec: set-id bits and device nodes count
/// only when suid/dev are named), user/users (noexec,nosuid,nodev). Other
/// generic options (defaults, _netdev, noauto, ...) are accepted and ignored.
/// See docs/kdfs.md.
#[derive(Parser, Debug)]
#[command(name = "mount.kdfs", version)]
struct Args {
    /// The formatted local kDFS directory (see mkfs.kdfs).
    dir: PathBuf,
    /// Where to mount the namespace.
    mountpoint: PathBuf,
    /// Mount options.
    #[arg(short = 'o', value_name = "OPTIONS", default_value = "")]
    options: String,
    /// mount(8) helper flag: sloppy (ignored).
    #[arg(short = 's', hide = true)]
    sloppy: bool,
    /// mount(8) helper flag: fake, do everything but mount.
    #[arg(short = 'f', hide = true)]
    fake: bool,
    /// mount(8) helper flag: do not write /etc/mtab (ignored).
    #[arg(short = 'n', hide = true)]
    no_mtab: bool,
    /// mount(8) helper flag: verbose (ignored).
    #[arg(short = 'v', hide = true)]
    verbose: bool,
    /// mount(8) helper flag: type.subtype (ignored).
    #[arg(short = 't', hide = true)]
    fstype: Option<String>,
}

fn init_log(opts: &MountOptions) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if let Some(path) = &opts.log {
        if let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = b
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false)
                .try_init();
            return;
        }
    }
    let _ = b.with_writer(std::io::stderr).try_init();
}

/// Set up, mount, report to `status` (if detached), then serve until unmount.
fn serve(
    dir: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
    status: &mut Option<std::fs::File>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(2))
        .enable_all()
        .build()
        .context("cannot start runtime")?;
    let prepared = rt.block_on(prepare(dir, opts))?;
    // Resolved now: once mounted, the path does not answer until we serve it.
    let canonical = std::fs::canonicalize(mountpoint)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    let dev = kmount::mount_fuse(&prepared.dir, &canonical, opts)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    let session = match start_session(prepared, dev, rt.handle(), opts) {
        Ok(s) => s,
        Err(e) => {
            kmount::detach(&canonical);
            return Err(e);
        }
    };
    if let Err(e) = kdfs::client::set_readahead(&canonical, opts.readahead_kb) {
        tracing::warn!(error = %e, "kdfs: kernel read-ahead left at its default");
    }
    if let Some(mut f) = status.take() {
        let _ = f.write_all(b"OK");
        // Closing the pipe lets the waiting parent exit.
        drop(f);
        quiet_stdio();
    }
    session.run().context("FUSE session ended with an error")?;
    Ok(())
}

/// The FUSE session on the mounted connection `dev`, its notifier handed to
/// the cache (answering the kernel's INIT on the way).
fn start_session(
    prepared: Prepared,
    dev: OwnedFd,
    rt: &tokio::runtime::Handle,
    opts: &MountOptions,
) -> Result<fuser::Session<KdfsFs>> {
    let ops = prepared.ops.clone();
    let fs = KdfsFs::new(
        prepared.ops,
        rt.clone(),
        // Not kept coherent by callbacks: at most a second, as before.
        opts.attr_timeout.min(std::time::Duration::from_secs(1)),
        opts.passthrough,
        opts.xattr,
    );
    let session = fuser::Session::from_fd(fs, dev, fuser::SessionACL::All, fuse_config(opts))
        .context("the kernel's FUSE handshake failed")?;
    let _ = ops.notifier.set(session.notifier());
    use std::os::fd::AsFd;
    match session.as_fd().try_clone_to_owned() {
        Ok(dev) => ops.cache.set_kernel(kdfs::client::cache::Kernel::new(
            session.notifier(),
            dev,
            ops.root.clone(),
        )),
        // Without it nothing is ever invalidated: the mount must not cache.
        Err(e) => anyhow::bail!("cannot duplicate the FUSE descriptor: {e}"),
    }
    Ok(session)
}

/// A detached server must not hold its caller's terminal or pipes open.
fn quiet_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; null stays open meanwhile.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Fork: the child serves the mount; the parent waits until the mount is up
/// (or failed) and exits with that status, as mount(8) expects of a helper.
fn detach(dir: &Path, mountpoint: &Path, opts: &MountOptions) -> Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a 2-element array pipe2 fills.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no thread has been started yet (the runtime is built in the child).
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(rd);
            // SAFETY: setsid has no memory-safety preconditions.
            unsafe { libc::setsid() };
            let mut status = Some(std::fs::File::from(wr));
            if let Err(e) = serve(dir, mountpoint, opts, &mut status) {
                if let Some(mut f) = status {
                    let _ = f.write_all(format!("{e:#}").as_bytes());
                }
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        _ => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg.starts_with("OK") {
                Ok(())
            } else if msg.is_empty() {
                Err(anyhow!("the mount process died before mounting"))
            } else {
                Err(anyhow!(msg))
            }
        }
    }
}

fn run(args: Args) -> Result<()> {
    let opts = MountOptions::parse(&args.options)?;
    if args.fake {
        return Ok(());
    }
    init_log(&opts);
    if opts.foreground {
        serve(&args.dir, &args.mountpoint, &opts, &mut None)
    } else {
        detach(&args.dir, &args.mountpoint, &opts)
    }
}

fn main() -> ExitCode {
    krg_clidoc::intercept::<Args>(&PAGE);
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.kdfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The hand-written part of this binary's man page (`--generate man`).
const PAGE: krg_clidoc::Page = krg_clidoc::Page {
    section: "8",
    sections: &[
        krg_clidoc::Section {
            title: "EXIT STATUS",
            body:
                "0: mounted (the file system is served in the background unless -o foreground).
1: not mounted; one line says why (after waiting up to timeo for the local krgd and the root node).",
        },
        krg_clidoc::Section {
            title: "FILES",
            body: "/etc/fstab: a line such as \"/KDFS /mnt/kdfs kdfs defaults,_netdev 0 0\".
/etc/krg/cluster.key: the cluster key (-o keyfile=).
/run/krg/krgd.sock: the local krgd (-o socket=).",
        },
        krg_clidoc::Section {
            title: "EXAMPLES",
            body: "  mount -t kdfs /KDFS /mnt/kdfs
  mount -t kdfs -o ro,attr_timeout=5 /KDFS /mnt/kdfs
  mount -t kdfs -o timeo=120 /KDFS /mnt/kdfs   # wait up to 2 minutes for the root node",
        },
        krg_clidoc::Section {
            title: "SEE ALSO",
            body: "mkfs.kdfs(8), krgd(8), mount(8)",
        },
    ],
};
