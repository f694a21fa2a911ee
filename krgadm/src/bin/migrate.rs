//! `migrate [NODE:]PID NODE`: move a running process to another node of
//! the cluster (Kerrighed's command). Thin: the local krgd does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::client::AdminClient;
use krg_proto::migrate::{MigrateReport, MigrateRequest};
use krg_proto::proc::{ProcReply, ProcRequest};
use krg_proto::NodeId;

const AFTER: &str = "\
The process (it must hold CAN_MIGRATE: krgcapset -d +CAN_MIGRATE in the shell
that starts it) keeps its PID, memory, registers, threads, signal state, open
files and pipes; krg ps shows it on the new node. Only its owner or root may
move it. If anything fails before the handover it keeps running where it was.

Examples:
  migrate 4242 3          move process 4242 of this node to node 3
  migrate 3:4242 1        move process 4242 of node 3 to node 1
  migrate --tree 4242 2   move 4242 and its descendants
  migrate --postcopy 4242 2  run 4242 on node 2 at once, its memory following
  migrate 1:4096 3        move the krg run job whose program is 4096 on node 1
                          (its whole tree, its PIDs; krg run keeps its output,
                          input, signals and exit status)
  migrate --timings 4242 2   and print how long each phase took
  migrate --no-stand-in 4242 2  leave nothing behind (its parent sees it killed)";

/// Move a running process to another node.
#[derive(Parser)]
#[command(name = "migrate", version, after_help = AFTER)]
struct Cli {
    /// The process: PID (of this node; the PID of a stand-in here names
    /// its process, wherever it runs) or NODE:PID.
    process: String,
    /// The node to move it to.
    node: NodeId,
    /// Move its descendants with it (without it, a process with children is refused).
    #[arg(long)]
    tree: bool,
    /// Post-copy: stop the process, send all but its memory, run it on
    /// the target at once, and bring its memory over from this node behind
    /// it (each page it touches first). Its stopped time no longer grows
    /// with its memory, but until its memory is all in it needs both
    /// nodes: if the origin fails meanwhile, the process is lost.
    #[arg(long)]
    postcopy: bool,
    /// Leave no stand-in on this node for a process started without krg
    /// run: its parent sees it killed at the move (and its output goes on
    /// through krgd, its stdin becomes /dev/null). Without it, the process
    /// is replaced here by its stand-in, which its parent waits for.
    #[arg(long)]
    no_stand_in: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Print where the time went, phase by phase (the origin's checks,
    /// dump with its freeze, push, handover, the target's restore), one
    /// `phase ms` line each on stderr (with --json: a "phases" object).
    /// Also KRG_TIMINGS=1.
    #[arg(long)]
    timings: bool,
    /// The local krgd's admin socket.
    #[arg(long, env = "KRG_SOCKET", default_value = krg_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
}

fn parse_process(s: &str) -> Result<(Option<NodeId>, i32)> {
    let (node, pid) = match s.split_once(':') {
        Some((n, p)) => (
            Some(
                n.parse::<NodeId>()
                    .map_err(|_| anyhow!("{n:?} is not a node id"))?,
            ),
            p,
        ),
        None => (None, s),
    };
    let pid: i32 = pid
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("{pid:?} is not a PID"))?;
    Ok((node, pid))
}

async fn run(cli: Cli) -> Result<MigrateReport> {
    let (from, pid) = parse_process(&cli.process)?;
    let mut c = AdminClient::connect(&cli.socket)
        .await
        .with_context(|| format!("cannot reach krgd at {}", cli.socket.display()))?;
    let req = MigrateRequest {
        from,
        pid,
        to: cli.node,
        tree: cli.tree,
        postcopy: cli.postcopy,
        no_stand_in: cli.no_stand_in,
    };
    match c
        .call(&AdminRequest::Proc(ProcRequest::Migrate(req)))
        .await?
    {
        AdminResponse::Proc(ProcReply::Migrated(r)) => Ok(r),
        AdminResponse::Error(e) => bail!("{}", e.message),
        other => bail!("unexpected answer from krgd: {other:?}"),
    }
}

/// The hand-written part of the man page (`migrate --generate man`).
const PAGE: krg_clidoc::Page = krg_clidoc::Page {
    section: "1",
    sections: &[
        krg_clidoc::Section {
            title: "EXIT STATUS",
            body: "0: the process moved.
1: refused, or failed before the handover (the process keeps running where it was; a target that the membership marks failed is given up at once), or the target failed after it and the origin took the process back (the line says so); one line says why.
2: bad usage.",
        },
        krg_clidoc::Section {
            title: "POST-COPY",
            body: "With --postcopy the process is stopped, everything but its memory goes to the target, and it runs there at once; the target's krgd then pulls its memory from this node's copy of the image, what the process touches first, the rest behind it, each 64 KiB block checked against its CRC. Its stopped time no longer grows with its memory. Until the memory is all in the process needs both nodes: if this node fails meanwhile, the process is killed on the target (its memory cannot be completed). A krg run job moves so too: its page server is then a process of the job's PID namespace (root's, named restart) until the memory is in. Balancing and a leaving node's hand-over use the default (pre-copy).",
        },
        krg_clidoc::Section {
            title: "KRG RUN JOBS",
            body: "A job started by krg run (from a shell that holds CAN_MIGRATE) moves with its program's whole tree and keeps the PIDs it sees; the krg run that started it keeps its output, input, signals and exit status, wherever the job runs. Name it by its program's PID as krg ps shows it (NODE:PID). A job on a terminal (krg run -t) gets a new terminal like its own on the target, as its controlling terminal with its foreground process group; what its user types and resizes go on through the node it left. A detached job (krg run --detach) keeps its output files on the node that started it, fed through that node, which writes its status there when it ends; if that node goes away, the job runs on and its output goes into files on the node that runs it. What a process held here (CAN_MIGRATE, CHECKPOINTABLE) it holds there. A process started otherwise keeps writing to the terminal or pipes its stdout and stderr led to here (relayed by the krgds); its stdin becomes /dev/null, and its parent sees it killed at the move (there is no stand-in keeping its PID here).",
        },
        krg_clidoc::Section {
            title: "SEE ALSO",
            body: "krg(1), krgcapset(1), checkpoint(1), restart(1), krgd(8)",
        },
    ],
};

fn main() -> ExitCode {
    krg_clidoc::intercept::<Cli>(&PAGE);
    let cli = Cli::parse();
    let json = cli.json;
    let timings =
        cli.timings || std::env::var_os("KRG_TIMINGS").is_some_and(|v| !v.is_empty() && v != "0");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("migrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(r) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "from": r.from, "to": r.to, "pids": r.pids, "bytes": r.bytes,
                        "stopped_ms": r.stopped_ms, "total_ms": r.total_ms, "fell_back": r.fell_back,
                        "phases": r.phases.iter().map(|p| serde_json::json!({"name": p.name, "ms": p.us as f64 / 1000.0})).collect::<Vec<_>>(),
                    })
                );
            }
            if timings && !json {
                for p in &r.phases {
                    eprintln!(
                        "migrate: timings: {:<32} {:>10.3} ms",
                        p.name,
                        p.us as f64 / 1000.0
                    );
                }
            }
            if let Some(why) = &r.fell_back {
                eprintln!("migrate: the target failed after the handover ({why}); {:?} run on node {} again", r.pids, r.to);
                return ExitCode::FAILURE;
            }
            if !json {
                eprintln!(
                    "migrate: {:?} moved from node {} to node {} ({} KiB, stopped {} ms, {} ms in all)",
                    r.pids, r.from, r.to, r.bytes / 1024, r.stopped_ms, r.total_ms
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
