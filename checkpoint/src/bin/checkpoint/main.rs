//! `checkpoint PID`: save a running process tree; `checkpoint inspect DIR SN`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use checkpoint::capclient::CapClient;
use checkpoint::dump::{self, DumpOptions};
use checkpoint::nodepid::NodePid;
use checkpoint::{describe, store};
use clap::{Parser, Subcommand};
use krg_proto::chkpt::ChkptRequest;

mod parts;
use parts::{copy_parts, forget_parts, release_parts, remove_parts, save_parts};

/// Save a running process and all its descendants under /var/chkpt/PID/ as
/// the next checkpoint SN (1, 2, …). The job is frozen only while its state is
/// read and then continues by itself. The process must be CHECKPOINTABLE
/// (see krgcapset) and belong to you, unless you are root. A process of a
/// `krg run` job (in a PID namespace of its own) is saved with its PIDs
/// there; restart brings it back as a job. NODE:PID names a process as
/// `krg ps` shows it, on any node; PID may also be the stand-in of a
/// process that moved to another node. Such a process is saved by the
/// node it runs on, in that node's /var/chkpt, which checkpoint prints.
/// A tree some of whose processes moved away (their stand-ins in it) is
/// saved as one application: the node of each such process saves it
/// first and holds it stopped until the tree is saved too, so that all
/// of it is saved as of one moment — with what was on its way between it
/// and its stand-in: its output is written out by the stand-in first, and
/// the input it had not read is kept with its SN on its node. Each such
/// part is then copied into the application's directory
/// (/var/chkpt/PID/parts/NODE/ITS_PID/), so that restart can run it
/// without its node.
#[derive(Parser)]
#[command(name = "checkpoint", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// PID of the root of the process tree to save; NODE:PID as `krg ps`
    /// shows it (saved by that node).
    #[arg(value_name = "[NODE:]PID")]
    pid: Option<NodePid>,
    /// Root directory of checkpoints.
    #[arg(long, env = "KRG_CHKPT_DIR", default_value = store::DEFAULT_ROOT)]
    dir: PathBuf,
    /// End the job once it is saved. Its established TCP connections stay
    /// locked (nftables: their packets dropped, needs nft) until restart.
    #[arg(long)]
    kill: bool,
    /// krgd admin socket.
    #[arg(long, env = "KRG_SOCKET", default_value = krg_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Root only: do not ask krgd whether the process is CHECKPOINTABLE (for a
    /// node without krgd; root may ptrace any process anyway).
    #[arg(long)]
    no_capability_check: bool,
    /// Node id written in the image (node_<N>_v<SN>.bin, bit N of the node
    /// mask; 0..=63). Default: the id of the local krgd's node, or 0 when
    /// --no-capability-check is given and no krgd answers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=63))]
    node: Option<u32>,
    /// A SysV semaphore set (id) that belongs to the job; repeatable.
    /// (Shared memory segments the job attached are found by themselves.)
    #[arg(long = "sysv-sem", value_name = "ID")]
    sysv_sem: Vec<i32>,
    /// A SysV message queue (id) that belongs to the job; repeatable.
    #[arg(long = "sysv-msg", value_name = "ID")]
    sysv_msg: Vec<i32>,
    /// Save every page, starting a new chain, even when the previous SN
    /// holds the unchanged ones (by default an SN stores only the pages
    /// changed since the previous one).
    #[arg(long)]
    full: bool,
    /// Print where the time went, phase by phase, on a second line
    /// (`timings: prepare=…ms precheck=…ms precopy=…ms freeze=…ms …`; the
    /// phases from `freeze` to `resume` are the frozen time). Also
    /// `KRG_TIMINGS=1`.
    #[arg(long)]
    timings: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print every file of one checkpoint in readable form; without SN,
    /// the SNs of the directory and the chains they form.
    ///
    /// Examples: `checkpoint inspect /var/chkpt/4242 2`,
    /// `checkpoint inspect /var/chkpt/4242`.
    Inspect {
        /// Print JSON (all metadata, no page data) instead of text.
        #[arg(long)]
        json: bool,
        /// The application directory, e.g. /var/chkpt/4242.
        dir: PathBuf,
        /// The checkpoint SN.
        sn: Option<u32>,
    },
    /// Remove checkpoint SN of application PID. A later SN that keeps pages
    /// in it gets them copied in first, so every other SN stays restorable.
    /// What other nodes saved of it (processes of the application that
    /// had moved there) they remove too, asked through krgd.
    ///
    /// Example: `checkpoint rm 4242 1`.
    Rm {
        /// Root directory of checkpoints.
        #[arg(long, env = "KRG_CHKPT_DIR", default_value = store::DEFAULT_ROOT)]
        dir: PathBuf,
        /// Application id (PID of the checkpointed root process).
        pid: i32,
        /// The SN to remove.
        sn: u32,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Some(Cmd::Inspect { json, dir, sn }) => return inspect(json, &dir, sn),
        Some(Cmd::Rm { dir, pid, sn }) => {
            // SAFETY: getuid has no preconditions.
            let caller = unsafe { libc::getuid() };
            // (read before the SN goes; an image that cannot be read has none)
            let parts = checkpoint::restore::stand_ins_of(&dir, pid, sn, None)
                .map(|(s, _)| s)
                .unwrap_or_default();
            let r = checkpoint::chain::remove(&store::app_dir(&dir, pid), sn, caller)?;
            match r.merged_into {
                Some(j) => println!(
                    "checkpoint: removed SN {sn} of {pid}; SN {j} took over {:.1} MiB of its pages",
                    r.bytes as f64 / (1 << 20) as f64
                ),
                None => println!("checkpoint: removed SN {sn} of {pid}"),
            }
            return remove_parts(&cli.socket, &store::app_dir(&dir, pid), (pid, sn), &parts);
        }
        None => {}
    }
    let Some(NodePid { node, pid }) = cli.pid else {
        bail!("missing PID (see --help)")
    };
    if node.is_some() || checkpoint::standin::is_stand_in(pid) {
        return checkpoint_at(&cli, node, pid);
    }
    let query = || CapClient::connect(&cli.socket)?.call(ChkptRequest::Query { pid });
    let local_node = if cli.no_capability_check {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            bail!("--no-capability-check is for root only");
        }
        // Only the node id is wanted: without a krgd the image says node 0.
        query().map_or(0, |c| c.node)
    } else {
        let cap = query()?;
        if !cap.checkpointable {
            bail!("process {pid} is not CHECKPOINTABLE (run krgcapset -d +CHECKPOINTABLE in the shell that starts it)");
        }
        cap.node
    };
    let node = cli.node.unwrap_or(local_node);
    if node > 63 {
        bail!("this node's id ({node}) does not fit the 64-bit node mask of checkpoint images: give --node 0..63");
    }
    let timings = cli.timings || checkpoint::timings::wanted();
    // (without krgd a stand-in is refused, with the reason)
    let stand_ins = match cli.no_capability_check {
        true => Vec::new(),
        false => save_parts(&cli, pid)?,
    };
    let opts = DumpOptions {
        root: cli.dir,
        kill: cli.kill,
        stop: false,
        node,
        sysv_sem: cli.sysv_sem,
        sysv_msg: cli.sysv_msg,
        full: cli.full,
        // a krg job's tree (its own PID namespace) is saved with its PIDs
        // there; restart brings it back as a job
        other_pidns: true,
        stdio_files: Vec::new(),
        stand_ins,
    };
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .context("progress style")?,
        );
        b.set_message(format!("checkpoint {pid}"));
        Some(b)
    } else {
        None
    };
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let rep = match dump::checkpoint(pid, &opts, &progress) {
        Ok(rep) => rep,
        Err(e) => {
            // the parts run on, and what other nodes saved of them would
            // name an SN that is not
            release_parts(&cli.socket, &opts.stand_ins);
            forget_parts(&cli.socket, &opts.stand_ins);
            return Err(e.into());
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let chain = rep
        .parent
        .map_or(String::new(), |p| format!(", incremental on SN {p}"));
    println!(
        "checkpoint: saved process {pid} ({} task(s)) as SN {} in {} ({:.1} MiB{chain}), frozen {:.1} ms",
        rep.tasks.len(),
        rep.sn,
        rep.dir.display(),
        rep.image_bytes as f64 / (1 << 20) as f64,
        rep.frozen.as_secs_f64() * 1000.0
    );
    // the parts, held stopped since they were saved, run on now that the
    // tree is saved too (with --kill they end with their stand-ins)
    if !cli.kill {
        release_parts(&cli.socket, &opts.stand_ins);
    }
    copy_parts(&cli.socket, &rep.dir, &opts.stand_ins);
    if timings {
        println!("checkpoint: {}", checkpoint::timings::line(&rep.phases));
    }
    Ok(())
}

/// A process named `NODE:PID`, or by a stand-in's PID: the node it runs
/// on saves it (in its own checkpoint directory), asked through krgd.
fn checkpoint_at(cli: &Cli, node: Option<u32>, pid: i32) -> Result<()> {
    let name = node.map_or(pid.to_string(), |n| format!("{n}:{pid}"));
    let unfit = [
        (
            cli.dir != std::path::Path::new(store::DEFAULT_ROOT),
            "--dir",
        ),
        (cli.node.is_some(), "--node"),
        (
            !cli.sysv_sem.is_empty() || !cli.sysv_msg.is_empty(),
            "--sysv-sem/--sysv-msg",
        ),
    ];
    if let Some((_, flag)) = unfit.iter().find(|(given, _)| *given) {
        bail!("process {name} is saved by the node it runs on, in that node's {}: {flag} does not apply", store::DEFAULT_ROOT);
    }
    let req = krg_proto::proc::CheckpointAt {
        node,
        pid,
        full: cli.full,
        kill: cli.kill,
        hold: false,
    };
    let r = CapClient::connect(&cli.socket)?.checkpoint_at(req)?;
    println!(
        "checkpoint: process {name} runs on node {}: saved there as SN {} in {} ({} task(s), {:.1} MiB), frozen {:.1} ms; back with: restart {}:{} {}",
        r.node,
        r.sn,
        r.dir,
        r.tasks,
        r.image_bytes as f64 / (1 << 20) as f64,
        r.frozen_us as f64 / 1000.0,
        r.node,
        r.host_pid,
        r.sn
    );
    Ok(())
}

fn inspect(json: bool, dir: &std::path::Path, sn: Option<u32>) -> Result<()> {
    let text = match (sn, json) {
        (Some(sn), true) => format!(
            "{}\n",
            serde_json::to_string_pretty(&describe::inspect_json(dir, sn)?)?
        ),
        (Some(sn), false) => describe::inspect(dir, sn)?,
        (None, true) => format!(
            "{}\n",
            serde_json::to_string_pretty(&describe::chains_json(dir)?)?
        ),
        (None, false) => describe::chains(dir)?,
    };
    // A reader that leaves early (`| head`) is not an error: print! would panic.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn main() {
    krg_clidoc::intercept::<Cli>(&PAGE);
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("checkpoint: {e:#}");
        std::process::exit(1);
    }
}

/// The hand-written part of this binary's man page (`--generate man`).
const PAGE: krg_clidoc::Page = krg_clidoc::Page {
    section: "1",
    sections: &[
        krg_clidoc::Section {
            title: "EXIT STATUS",
            body: "0: the process tree was saved (or the subcommand done).
1: refused or failed (not CHECKPOINTABLE, not yours, an unsupported resource, with the PID and the reason); the job keeps running.
2: bad usage.",
        },
        krg_clidoc::Section {
            title: "FILES",
            body: "/var/chkpt/PID/: the checkpoints of PID, one SN each (node_N_vSN.bin, description_vSN.txt).
/var/chkpt/PID/parts/NODE/ITS_PID/: the copy of a part of the application that node NODE saved (as ITS_PID there).
/run/krg/krgd.sock: the local krgd, asked whether the process is CHECKPOINTABLE.",
        },
        krg_clidoc::Section {
            title: "EXAMPLES",
            body: "  checkpoint 4242
  checkpoint 2:4096        (a process of node 2, as krg ps shows it: saved there)
  checkpoint --full 4242
  checkpoint inspect /var/chkpt/4242
  checkpoint rm 4242 1",
        },
        krg_clidoc::Section {
            title: "SEE ALSO",
            body: "checkpoint(1), restart(1), krgcapset(1), krgd(8)",
        },
    ],
};
