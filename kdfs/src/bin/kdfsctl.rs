//! kdfsctl: look at a kDFS from any node (`kdfsctl status`), stripe its
//! directories (`kdfsctl stripe`), convert it to two copies (`kdfsctl
//! replicas`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kdfs::replicasctl::Converted;

/// The status was printed, and some member's files cannot be reached.
const EXIT_DEGRADED: u8 = 3;

/// Look at the kDFS this node's krgd serves: which nodes serve a store of
/// it, how full each is, and whose files cannot be reached now; show and
/// set how its files are striped over nodes; have every store keep two
/// copies of its files.
#[derive(Parser, Debug)]
#[command(
    name = "kdfsctl",
    version,
    after_help = "Examples:\n  kdfsctl status\n  kdfsctl status /mnt/kdfs\n  kdfsctl status --json\n  kdfsctl stripe 4M:4 /mnt/kdfs/big\n  kdfsctl stripe /mnt/kdfs/big/file\n  kdfsctl stripe off /mnt/kdfs/big\n  kdfsctl replicas 2\n  kdfsctl replicas 3 /mnt/kdfs/important\n  kdfsctl replicas /mnt/kdfs/important/db"
)]
struct Args {
    /// krgd admin socket.
    #[arg(long, global = true, env = "KRG_SOCKET", default_value = krg_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The cluster key (read by root only), to ask the other nodes.
    #[arg(long, global = true, default_value = krg_proto::DEFAULT_CLUSTER_KEY)]
    keyfile: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every member: whether it serves a store of this kDFS, its size,
    /// use and inodes; the members whose files cannot be reached now.
    Status {
        /// A kDFS mount point of this node: checked to mount the store
        /// this node's krgd serves (the status is the same from any mount).
        mount: Option<PathBuf>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show or set striping. `stripe UNIT:COUNT DIR`: files made in DIR
    /// from now on (and in directories made in it, which inherit the
    /// policy) are cut in UNIT-byte units (K, M, G; a multiple of 4K)
    /// spread over COUNT nodes (2-64; fewer if fewer serve the kDFS), the
    /// creating node first. `stripe off DIR` clears it; `stripe PATH`
    /// shows a directory's policy or a file's layout. Root or the
    /// directory's owner may set it.
    Stripe {
        /// `[UNIT:COUNT | off] PATH`
        #[arg(num_args = 1..=2, required = true, value_name = "[UNIT:COUNT|off] PATH")]
        args: Vec<String>,
    },
    /// Show or set how many nodes keep files. `replicas COPIES` (1 to 3):
    /// every member's store keeps COPIES copies of its files from now on:
    /// a single-copy kDFS becomes `--replicas 2` (or 3), each store's copy
    /// made on its mirror (the next member) in the background — `kdfsctl
    /// status` shows each one `copying`, then `in sync`. The kdfs mounts
    /// stay up: a node's mount stops writing its store in place first (no
    /// more FUSE passthrough), and a node whose mount still has files open
    /// it opened before with passthrough converts once they are closed (its
    /// line says so). A member down is left as it is: run it again once it is back. Fewer copies
    /// than now is refused. `replicas COPIES PATH`: PATH and everything
    /// under it keep COPIES copies, and what is made in it from now on
    /// too (a policy directories made in it inherit), like a GlusterFS or
    /// Ceph layout; the directories above it keep at least as many. On a
    /// mirrored kDFS only; root or each inode's owner may. `replicas PATH`
    /// shows its count.
    Replicas {
        /// `COPIES [PATH] | PATH`
        #[arg(num_args = 1..=2, required = true, value_name = "COPIES [PATH] | PATH")]
        args: Vec<String>,
    },
}

/// `kdfsctl replicas`: one line per member; exit 1 unless every one keeps
/// `copies` copies now.
fn replicas(rt: &tokio::runtime::Runtime, args: &Args, copies: u8) -> ExitCode {
    let done = rt.block_on(kdfs::replicasctl::set(&args.socket, &args.keyfile, copies));
    let nodes = match done {
        Ok(n) => n,
        Err(e) => {
            eprintln!("kdfsctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for (node, outcome) in nodes {
        match outcome {
            Ok(Converted::Now) => println!("node {node}: keeps {copies} copies"),
            Ok(Converted::Later) => println!(
                "node {node}: converts once the files its kdfs mount opened before are closed"
            ),
            Err(why) => {
                failed = true;
                println!("node {node}: not changed: {why}");
            }
        }
    }
    if failed {
        eprintln!("kdfsctl: some stores were not changed (see above)");
        return ExitCode::FAILURE;
    }
    if copies > 1 {
        println!("each store's copy is made in the background: kdfsctl status shows it");
    }
    ExitCode::SUCCESS
}

/// `kdfsctl replicas COPIES [PATH] | PATH`.
fn replicas_of(rt: &tokio::runtime::Runtime, args: &Args, words: &[String]) -> ExitCode {
    let copies = |w: &str| {
        w.parse::<u8>()
            .map_err(|_| kdfs::KdfsError::Invalid(format!("{w}: not a count of copies (1 to 3)")))
    };
    if let [w] = words {
        if let Ok(n) = w.parse::<u8>() {
            return replicas(rt, args, n);
        }
    }
    let done = match words {
        [path] => kdfs::replicasctl::show(path.as_ref()).map(|(own, policy)| {
            let new = policy.map_or(String::new(), |p| format!("; made in it: {p}"));
            println!("{path}: {own} copies{new}");
        }),
        [n, path] => copies(n).and_then(|n| {
            let c = kdfs::replicasctl::set_tree(path.as_ref(), n)?;
            let above = match c.above {
                0 => String::new(),
                a => format!(", {a} directories above raised to {n}"),
            };
            println!(
                "{path}: {n} copies for {} inodes and what is made in it{above}; the mirrors copy them in the background (kdfsctl status)",
                c.inodes
            );
            Ok(())
        }),
        _ => Err(kdfs::KdfsError::Invalid(
            "usage: kdfsctl replicas COPIES [PATH] | PATH".into(),
        )),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kdfsctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `kdfsctl stripe`: prints what it set or found; exit 1 with one line on error.
fn stripe(args: &[String]) -> ExitCode {
    let done = match args {
        [path] => kdfs::stripectl::show(path.as_ref()).map(|s| match s {
            Some(s) => println!("{path}: {s}"),
            None => println!("{path}: not striped"),
        }),
        [spec, path] => {
            let policy = match spec.as_str() {
                "off" => Ok(None),
                s => s.parse().map(Some),
            };
            match policy {
                Ok(p) => kdfs::stripectl::set(path.as_ref(), p).map(|()| match p {
                    Some(p) => println!("{path}: files made here are striped {p}"),
                    None => println!("{path}: files made here are not striped"),
                }),
                Err(e) => Err(kdfs::KdfsError::Invalid(e.to_string())),
            }
        }
        _ => Err(kdfs::KdfsError::Invalid(
            "usage: kdfsctl stripe [UNIT:COUNT|off] PATH".into(),
        )),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kdfsctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    krg_clidoc::intercept::<Args>(&PAGE);
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kdfsctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (json, mount) = match &args.command {
        Command::Status { json, mount } => (*json, mount.clone()),
        Command::Stripe { args } => return stripe(args),
        Command::Replicas { args: words } => return replicas_of(&rt, &args, words),
    };
    let asked = kdfs::status::gather(&args.socket, &args.keyfile, mount.as_deref());
    let status = match rt.block_on(asked) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kdfsctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("kdfsctl: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", kdfs::status::render(&status));
    }
    if status.down().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DEGRADED)
    }
}

/// The hand-written part of this binary's man page (`--generate man`).
const PAGE: krg_clidoc::Page = krg_clidoc::Page {
    section: "8",
    sections: &[
        krg_clidoc::Section {
            title: "EXIT STATUS",
            body: "0: every member's files can be reached (status; a failed member's through its mirror); the striping was shown or set (stripe); every member keeps the copies asked, or the tree was given them, or the count shown (replicas).
1: no status: krgd unreachable, no store attached here, the cluster key unreadable; or stripe refused (not on a kDFS mount, not the directory's owner, a bad UNIT:COUNT); or some member did not change (replicas: its line says why), or a tree not changed (not on a mirrored kDFS, not the owner); one line on stderr says why.
2: bad command line.
3: the status was printed, and some member's files cannot be reached now (it is failed or does not answer, and no mirror serves them).",
        },
        krg_clidoc::Section {
            title: "FILES",
            body: "/run/krg/krgd.sock: the local krgd (--socket, KRG_SOCKET).
/etc/krg/cluster.key: the cluster key (--keyfile).",
        },
        krg_clidoc::Section {
            title: "SEE ALSO",
            body: "mkfs.kdfs(8), mount.kdfs(8), fsck.kdfs(8), krgadm(8)",
        },
    ],
};
