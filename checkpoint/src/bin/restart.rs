//! `restart PID SN`: bring a checkpointed process tree back.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use checkpoint::capclient::CapClient;
use checkpoint::nodepid::NodePid;
use checkpoint::restore::pidns::PidNsTarget;
use checkpoint::restore::{self, RestoreOptions, StandInStart};
use checkpoint::{partcopy, store};
use clap::Parser;
use krg_proto::chkpt::ChkptRequest;
use krg_proto::proc::SavedPart;

/// Recreate the process tree saved as checkpoint SN of application PID, with
/// its recorded PIDs, parent/child relations, memory, files, pipes, signal
/// state and credentials; it continues where it was. Must run as root. fds 0-2
/// that led to a terminal or outside the tree are taken from this command;
/// such pipes and terminals on higher fds get this command's stdin (a read
/// end) or stdout, or what --inherit-fd names.
///
/// A checkpoint of a `krg run` job (a tree in a PID namespace of its own)
/// comes back as a detached job of this node, through its krgd: a new
/// namespace, the job's own PIDs in it, its output in files (printed).
///
/// `NODE:PID` names a job's checkpoint on another node (`checkpoint` of a
/// stand-in prints it): that node's krgd restarts it there.
///
/// An application some of whose processes ran on other nodes (stand-ins
/// in its tree): each of those runs again where it was saved, or, when
/// that node is down or lost it, here from its copy in the application's
/// directory (parts/NODE/PID/).
///
/// Examples: `restart 4242 1`; `restart --inherit-fd 5:/tmp/out.log 4242 2`;
/// `restart 2:81234 1`.
#[derive(Parser)]
#[command(name = "restart", version)]
struct Cli {
    /// Application id: the PID of the process that was checkpointed;
    /// NODE:PID for a job's checkpoint on another node.
    #[arg(value_name = "[NODE:]PID")]
    app: NodePid,
    /// Checkpoint number.
    sn: u32,
    /// Root directory of checkpoints.
    #[arg(long, env = "KRG_CHKPT_DIR", default_value = store::DEFAULT_ROOT)]
    dir: PathBuf,
    /// Node whose tasks to restart (node_<N>_v<SN>.bin). Default: the one
    /// node the checkpoint holds tasks of. An application whose processes
    /// ran on other nodes (stand-ins in its tree) comes back all on this
    /// node with it: each of those processes runs here from its copy in
    /// the application's directory (without one: again where it was
    /// saved, then it moves here).
    #[arg(long)]
    node: Option<u32>,
    /// Seconds to wait for a recorded PID still in use (a zombie being reaped).
    #[arg(long, default_value_t = 5.0)]
    pid_wait: f64,
    /// Do not insist on the recorded PIDs: the kernel picks new ones (printed).
    /// For single-threaded processes; a program that kept its own PID in
    /// memory (or its children's) sees stale values.
    #[arg(long)]
    new_pids: bool,
    /// Let the processes run as soon as everything but their private
    /// anonymous memory is back; a page server (a process that outlives
    /// restart, printed) brings each page in on first touch and the rest in
    /// the background, checking every block against its CRC. The whole
    /// image is still checked before anything runs.
    #[arg(long)]
    lazy: bool,
    /// With --lazy: let the processes run before their page data is checked
    /// (only the metadata is); each 64 KiB block is checked against its CRC
    /// as it loads, and a mismatch then kills them. Makes the time until
    /// they run independent of their memory size.
    #[arg(long)]
    check_as_loaded: bool,
    /// Give fd N of the job PATH (opened as the job's user, with the access
    /// mode it had) instead of restart's own stdin/stdout, for a pipe or
    /// terminal that led outside the tree (repeatable), e.g.
    /// `--inherit-fd 5:/tmp/out.log`.
    #[arg(long, value_name = "N:PATH", value_parser = parse_inherit)]
    inherit_fd: Vec<(i32, String)>,
    /// Restore into the PID namespace whose init is PID (a `krg run` job
    /// that migrated: krgd started that init), giving each process the PID
    /// `--ns-pid` names for it there. For krgd. With --lazy the page
    /// server is a process of that namespace (its PID in restart's is
    /// reported).
    #[arg(long, value_name = "PID", requires = "ns_pid")]
    pidns_of: Option<i32>,
    /// With --pidns-of: the PID in the job's namespace of the image's PID
    /// HOST (one per process and thread of the image; repeatable).
    #[arg(long, value_name = "HOST:INNER", value_parser = parse_ns_pid, requires = "pidns_of")]
    ns_pid: Vec<(i32, i32)>,
    /// krgd admin socket: the restored processes are made CHECKPOINTABLE
    /// again there (skipped when no krgd listens).
    #[arg(long, env = "KRG_SOCKET", default_value = krg_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Write the final line (success or error) to this fd instead of
    /// stderr (krgd, restoring a migrated process whose stdio is restart's).
    #[arg(long, value_name = "FD")]
    report_fd: Option<i32>,
    /// With --lazy --check-as-loaded: the page data is still arriving
    /// (a post-copy migration); before reading any of it, ask for it on
    /// FD, a Unix socket to krgd. For krgd.
    #[arg(long, value_name = "FD", requires = "check_as_loaded")]
    fetch_fd: Option<i32>,
    /// The root leads a session whose controlling terminal is restart's
    /// stdin (a terminal, which becomes the root's fd 0), with process
    /// group PGID (a PID of the image; 0 for none of the tree) in the
    /// foreground. For krgd, moving a job that runs on a terminal.
    #[arg(long, value_name = "PGID")]
    ctty_fg: Option<i32>,
    /// Let the restored processes run only once the caller writes `G` on
    /// FD: restart writes `R` there when they are ready (everything back,
    /// nothing run yet) and kills them if anything else comes back, or
    /// end of file. For krgd, which lets a migrated process run on its
    /// target only once the cluster decided it runs there.
    #[arg(long, value_name = "FD")]
    gate_fd: Option<i32>,
    /// Make the image's stand-in PID again (a process that had moved to
    /// another node, restored there meanwhile) as `krg`, with TOKEN (hex)
    /// to claim its process's session from krgd (repeatable; every
    /// stand-in of the image needs one). For krgd.
    #[arg(long, value_name = "PID:TOKEN", value_parser = parse_stand_in)]
    stand_in: Vec<(i32, u64)>,
    /// The `krg` program stand-ins run (default: `krg` next to restart,
    /// else /usr/bin/krg).
    #[arg(long, value_name = "PATH")]
    stand_in_program: Option<String>,
    /// Print where the time went, phase by phase, on a line before the last
    /// (`restart: timings: load=…ms fork_root=…ms …`). Also `KRG_TIMINGS=1`.
    #[arg(long)]
    timings: bool,
}

fn main() {
    krg_clidoc::intercept::<Cli>(&PAGE);
    let cli = Cli::parse();
    let run = || -> Result<()> {
        if cli.pidns_of.is_none() && (cli.app.node.is_some() || is_a_job(&cli)?) {
            return restart_job(&cli);
        }
        let (stand_ins, elsewhere) = stand_ins(&cli)?;
        let opts = RestoreOptions {
            root: cli.dir.clone(),
            node: cli.node,
            pid_wait: Duration::from_secs_f64(cli.pid_wait.clamp(0.0, 3600.0)),
            new_pids: cli.new_pids,
            lazy: cli.lazy,
            check_as_loaded: cli.check_as_loaded,
            inherit_fds: cli.inherit_fd.clone(),
            pidns: cli.pidns_of.map(|init| PidNsTarget {
                init,
                map: cli.ns_pid.clone(),
            }),
            fetch_fd: cli.fetch_fd,
            ctty_fg: cli.ctty_fg,
            gate_fd: cli.gate_fd,
            stand_ins,
        };
        let rep = restore::restart(cli.app.pid, cli.sn, &opts)?;
        // They were checkpointable when saved: keep them so (if krgd runs here).
        if cli.socket.exists() {
            if let Err(e) = mark_checkpointable(&cli.socket, &rep.pids) {
                eprintln!(
                    "restart: warning: {:?} are running but not CHECKPOINTABLE: {e}",
                    rep.pids
                );
            }
        }
        let timings = if cli.timings || checkpoint::timings::wanted() {
            format!("restart: {}\n", checkpoint::timings::line(&rep.phases))
        } else {
            String::new()
        };
        let server = rep.server.map_or(String::new(), |s| {
            format!("; pages coming in behind it (page server PID {s})")
        });
        report(
            cli.report_fd,
            &format!(
                "{timings}restart: application {} running again from SN {} (PIDs {:?}){elsewhere}{server}",
                cli.app.pid, cli.sn, rep.pids
            ),
        );
        Ok(())
    };
    if let Err(e) = run() {
        report(cli.report_fd, &format!("restart: {e:#}"));
        std::process::exit(1);
    }
}

/// Is SN of the application a job's checkpoint (its tree in a PID
/// namespace of its own)? An image this cannot read is left to the
/// restore, which says what is wrong with it; a bad PID map is an error.
fn is_a_job(cli: &Cli) -> Result<bool> {
    match restore::jobns::read(&cli.dir, cli.app.pid, cli.sn) {
        Ok(job) => Ok(!job.map.is_empty()),
        Err(e @ checkpoint::ChkptError::BadImage { .. }) => Err(e.into()),
        Err(_) => Ok(false),
    }
}

/// Have the local krgd restart a job's checkpoint as a detached job (on
/// the node `NODE:PID` names, through its krgd).
fn restart_job(cli: &Cli) -> Result<()> {
    let unfit = [
        (cli.new_pids, "--new-pids"),
        (cli.lazy, "--lazy"),
        (!cli.inherit_fd.is_empty(), "--inherit-fd"),
        (cli.node.is_some(), "--node"),
        (cli.ctty_fg.is_some(), "--ctty-fg"),
        (cli.fetch_fd.is_some(), "--fetch-fd"),
        (cli.gate_fd.is_some(), "--gate-fd"),
    ];
    if let Some((_, flag)) = unfit.iter().find(|(given, _)| *given) {
        anyhow::bail!(
            "SN {} of {} is a krg job's checkpoint, restarted by krgd as a job: {flag} does not apply to it",
            cli.sn,
            cli.app.pid
        );
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        anyhow::bail!("restart must run as root");
    }
    let dir = std::path::absolute(&cli.dir)?;
    let job = CapClient::connect(&cli.socket)
        .and_then(|mut krgd| krgd.restart_job(cli.app.node, &dir, cli.app.pid, cli.sn))?;
    report(
        cli.report_fd,
        &format!(
            "restart: application {} running again from SN {} as a detached krg job on node {} (PID {} in its namespace, {} there); its output and status: {}",
            cli.app.pid, cli.sn, job.node, job.pid, job.host_pid, job.output
        ),
    );
    Ok(())
}

/// One line to stderr, or to `fd` (then closed: nothing restored keeps it).
fn report(fd: Option<i32>, line: &str) {
    match fd {
        Some(fd) if fd > 2 => {
            use std::io::Write;
            use std::os::fd::FromRawFd;
            // SAFETY: the caller handed us this fd for our report and nothing
            // else in this process uses it; File takes ownership and closes it.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            let _ = writeln!(f, "{line}");
        }
        _ => eprintln!("{line}"),
    }
}

/// Tell krgd the restored processes are CHECKPOINTABLE again.
fn mark_checkpointable(socket: &std::path::Path, pids: &[i32]) -> checkpoint::Result<()> {
    let mut krgd = CapClient::connect(socket)?;
    for &pid in pids {
        krgd.call(ChkptRequest::SetCheckpointable { pid, enable: true })?;
    }
    Ok(())
}

/// `N:PATH` of `--inherit-fd`.
fn parse_inherit(s: &str) -> std::result::Result<(i32, String), String> {
    let (n, path) = s
        .split_once(':')
        .ok_or_else(|| format!("{s}: expected N:PATH (e.g. 5:/tmp/out.log)"))?;
    let n: i32 = n
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("{n}: not an fd number"))?;
    if !path.starts_with('/') {
        return Err(format!("{path}: the path must be absolute"));
    }
    Ok((n, path.to_string()))
}

fn parse_ns_pid(s: &str) -> std::result::Result<(i32, i32), String> {
    let bad = || format!("{s}: expected HOST:INNER, two PIDs (e.g. 81234:4096)");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let pid = |x: &str| x.parse::<i32>().ok().filter(|p| *p > 0);
    Ok((pid(a).ok_or_else(bad)?, pid(b).ok_or_else(bad)?))
}

/// How restart makes the image's stand-ins, if it holds some: with the
/// tokens given (`--stand-in`), or those krgd gives as it has each
/// stand-in's process run again on its node; and what to say of them.
fn stand_ins(cli: &Cli) -> Result<(Option<StandInStart>, String)> {
    let (listed, owner) = restore::stand_ins_of(&cli.dir, cli.app.pid, cli.sn, cli.node)?;
    if listed.is_empty() {
        return Ok((None, String::new()));
    }
    // refused before krgd starts anything
    if cli.new_pids || cli.pidns_of.is_some() {
        anyhow::bail!(
            "SN {} of {} holds stand-ins of processes that ran on other nodes, which keep their PIDs: --new-pids and --pidns-of do not apply",
            cli.sn,
            cli.app.pid
        );
    }
    let (tokens, from_copies) = if cli.stand_in.is_empty() {
        let parts = listed
            .iter()
            .map(|s| SavedPart {
                stand_in: s.pid,
                node: s.part.node,
                host_pid: s.part.host_pid,
                sn: s.part.sn,
                uid: owner,
            })
            .collect();
        let app_dir = store::app_dir(&cli.dir, cli.app.pid);
        let copies = std::path::absolute(app_dir.join(partcopy::PARTS_DIR))
            .ok()
            .map(|p| p.display().to_string());
        let r = CapClient::connect(&cli.socket)
            // --node: the whole application on this node
            .and_then(|mut c| c.restore_parts(parts, cli.node.is_some(), copies))
            .context(
                "asking krgd to run the parts of the application saved by other nodes again",
            )?;
        (r.tokens, r.from_copies)
    } else {
        (cli.stand_in.clone(), Vec::new())
    };
    let program = cli.stand_in_program.clone().unwrap_or_else(|| {
        let next = std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.join("krg")));
        next.filter(|p| p.exists())
            .map_or("/usr/bin/krg".into(), |p| p.display().to_string())
    });
    let start = StandInStart {
        program,
        socket: cli.socket.clone(),
        tokens,
    };
    let whom = |from_copy: bool| -> Vec<String> {
        listed
            .iter()
            .filter(|s| from_copies.contains(&s.pid) == from_copy)
            .map(|s| format!("{} on node {}", s.pid, s.part.node))
            .collect()
    };
    let (theirs, copied) = (whom(false), whom(true));
    let mut said = match (cli.node, theirs.is_empty()) {
        (_, true) => String::new(),
        (Some(_), false) => format!(
            "; then coming here from their nodes, behind their stand-ins: {}",
            theirs.join(", ")
        ),
        (None, false) => format!(
            "; on their nodes, behind their stand-ins: {}",
            theirs.join(", ")
        ),
    };
    if !copied.is_empty() {
        said += &format!(
            "; here, from their copies in the application's directory, behind their stand-ins: {}",
            copied.join(", ")
        );
    }
    Ok((Some(start), said))
}

fn parse_stand_in(s: &str) -> std::result::Result<(i32, u64), String> {
    let bad = || format!("{s}: expected PID:TOKEN, a PID and a hex token (e.g. 4243:9f3c)");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let pid = a.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    let token = u64::from_str_radix(b, 16).map_err(|_| bad())?;
    Ok((pid, token))
}

/// The hand-written part of this binary's man page (`--generate man`).
const PAGE: krg_clidoc::Page = krg_clidoc::Page {
    section: "1",
    sections: &[
        krg_clidoc::Section {
            title: "EXIT STATUS",
            body: "0: the process tree runs again (a krg job's: as a detached job, its output directory printed).
1: refused or failed (a corrupted image, a PID still taken, not yours); nothing of the job runs.
2: bad usage.",
        },
        krg_clidoc::Section {
            title: "FILES",
            body: "/var/chkpt/PID/: the checkpoints written by checkpoint(1).
/var/chkpt/PID/parts/NODE/ITS_PID/: the copy of a part of the application, run here when node NODE is down or lost it.",
        },
        krg_clidoc::Section {
            title: "EXAMPLES",
            body: "  restart 4242 2
  restart --lazy 4242 2
  restart --new-pids 4242 1
  restart --inherit-fd 5:/tmp/out.log 4242 2
  restart 2:81234 1        (a krg job's checkpoint on node 2: restarted there)",
        },
        krg_clidoc::Section {
            title: "SEE ALSO",
            body: "checkpoint(1), restart(1), krgcapset(1), krgd(8)",
        },
    ],
};
