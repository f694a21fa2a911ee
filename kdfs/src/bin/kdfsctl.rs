//! kdfsctl: look at a kDFS from any node (`kdfsctl status`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The status was printed, and some member's files cannot be reached.
const EXIT_DEGRADED: u8 = 3;

/// Look at the kDFS this node's krgd serves: which nodes serve a store of
/// it, how full each is, and whose files cannot be reached now.
#[derive(Parser, Debug)]
#[command(
    name = "kdfsctl",
    version,
    after_help = "Examples:\n  kdfsctl status\n  kdfsctl status /mnt/kdfs\n  kdfsctl status --json"
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
}

fn main() -> ExitCode {
    krg_clidoc::intercept::<Args>(&PAGE);
    let args = Args::parse();
    let Command::Status { json, mount } = args.command;
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
            body: "0: every member answered.
1: no status: krgd unreachable, no store attached here, the cluster key unreadable; one line says why.
2: bad command line.
3: the status was printed, and some member's files cannot be reached now (it is failed or does not answer).",
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
