//! krg: the cluster as one machine, for every user. Thin: parse the
//! command line, ask the local krgd (which does the work on every node),
//! print. `run` drives a session: it is the job's stand-in on this node.

mod copy;
mod manpage;
mod nodesel;
mod output;
mod session;
mod signals;
mod spec;
mod standin;
mod stdin;
mod table;
mod term;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::nodesel::NodeSel;

#[derive(Parser)]
#[command(name = "krg", version, about = "Run, see and signal processes anywhere in a krg cluster", long_about = LONG_ABOUT)]
struct Cli {
    /// The local krgd's admin socket.
    #[arg(long, global = true, env = "KRG_SOCKET", default_value = krg_proto::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,

    #[command(subcommand)]
    command: Command,
}

const LONG_ABOUT: &str = "\
krg runs processes on any node of the cluster, shows every process the
cluster runs and signals them, and copies files to and from the nodes. It
talks to this node's krgd, which acts with your credentials (uid, gid,
groups, as the kernel reports them) on every node.

Examples:
  krg run -- ./sim --steps 100               where the placement policy says
  krg run -n 3 -- hostname                   on node 3
  krg run -n 1-64 -- uname -r                on 64 nodes; lines prefixed \"node12: \"
  krg run -a -b -- cat /etc/debian_version   every online node, identical outputs gathered
  krg run --push -n 5 -- ./a.out             ship the executable first
  krg ps                                     every process krg runs in the cluster
  krg ps -n 2-4 -u alice --json
  krg kill -TERM 3:4242                      NODE:PID, from any node
  krg push ./input.dat /scratch/ -a          scatter a file to every node
  krg get /var/log/app.log ./logs/ -n 1-8    gather: logs/app.log.node3, ...";

#[derive(Subcommand)]
enum Command {
    /// Run a command on one or more nodes; stdio, signals and the exit
    /// status behave as if it ran here.
    Run(RunArgs),
    /// The processes krg runs in the cluster: NODE PID USER %CPU RSS STAT TIME COMMAND.
    Ps(PsArgs),
    /// Send a signal to processes named NODE:PID.
    Kill(KillArgs),
    /// Copy a file to nodes (C3's cpush).
    Push(PushArgs),
    /// Copy a file from nodes, one local file per node (C3's cget).
    Get(GetArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    nodes: NodeSel,
    /// Gather identical outputs of several nodes (as clush -b).
    #[arg(short = 'b', long = "gather")]
    gather: bool,
    /// Copies to start on each node.
    #[arg(long, value_name = "N", default_value_t = 1)]
    per_node: u32,
    /// Give the job a terminal (default: when stdin and stdout are terminals and one job runs).
    #[arg(short = 't', long = "tty", conflicts_with = "no_tty")]
    tty: bool,
    /// Never give the job a terminal.
    #[arg(short = 'T', long = "no-tty")]
    no_tty: bool,
    /// Ship the executable (argv[0], searched in PATH here) to the nodes;
    /// for a script only the script is shipped, its interpreter must exist there.
    #[arg(long)]
    push: bool,
    /// Keep the job running after krg exits; its output goes to files on the node.
    #[arg(long)]
    detach: bool,
    /// Do not forward stdin (the job reads /dev/null).
    #[arg(long)]
    no_stdin: bool,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<std::ffi::OsString>,
}

#[derive(Args)]
struct PsArgs {
    #[command(flatten)]
    nodes: NodeSel,
    /// Only the processes of this user (name or uid).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct KillArgs {
    /// Signal (name or number) [default: TERM]; `-TERM`, `-9` also work.
    #[arg(
        short = 's',
        long = "signal",
        value_name = "SIG",
        default_value = "TERM"
    )]
    signal: String,
    /// Processes, as NODE:PID.
    #[arg(required = true, value_name = "NODE:PID")]
    targets: Vec<String>,
}

#[derive(Args)]
struct PushArgs {
    #[command(flatten)]
    nodes: NodeSel,
    /// The local file.
    source: PathBuf,
    /// Where on the nodes (a directory keeps the name) [default: the source's absolute path].
    dest: Option<PathBuf>,
}

#[derive(Args)]
struct GetArgs {
    #[command(flatten)]
    nodes: NodeSel,
    /// The file on the nodes.
    source: PathBuf,
    /// Local directory for the copies (`<name>.node<N>`) [default: .].
    dest: Option<PathBuf>,
}

/// `krg kill -TERM 3:42` → `krg kill -s TERM 3:42`: kill(1)'s spelling.
fn rewrite_kill_signal(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let sub = args.iter().position(|a| a == "kill");
    if let Some(i) = sub {
        if let Some(next) = args.get(i + 1).and_then(|a| a.to_str()) {
            if let Some(sig) = next
                .strip_prefix('-')
                .filter(|s| !s.starts_with('-') && s.len() > 1 && s != &"s")
            {
                if krg_proto::proc::parse_signal(sig).is_ok() {
                    let sig = sig.to_string();
                    args.splice(i + 1..i + 2, ["-s".into(), sig.into()]);
                }
            }
        }
    }
    args
}

fn main() -> ExitCode {
    // krgd made this process the stand-in of one that moved (its command
    // line is that process's, not ours to parse).
    if let Some(token) = std::env::var_os("KRG_STANDIN") {
        let socket = std::env::var_os("KRG_SOCKET")
            .map_or_else(|| PathBuf::from(krg_proto::DEFAULT_SOCKET), PathBuf::from);
        standin::main(&token.to_string_lossy(), &socket);
    }
    krg_clidoc::intercept::<Cli>(&manpage::PAGE);
    let cli = Cli::parse_from(rewrite_kill_signal(std::env::args_os().collect()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("krg: cannot start: {e}");
            return ExitCode::from(255);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            term::restore();
            eprintln!("krg: {e:#}");
            ExitCode::from(255)
        }
    }
}

async fn run(cli: Cli) -> Result<u8> {
    let socket = cli.socket;
    match cli.command {
        Command::Run(a) => session::run_command(&socket, a).await,
        Command::Ps(a) => table::ps(&socket, &a.nodes, a.user.as_deref(), a.json).await,
        Command::Kill(a) => table::kill(&socket, &a.signal, &a.targets).await,
        Command::Push(a) => copy::push(&socket, &a.nodes, &a.source, a.dest.as_deref()).await,
        Command::Get(a) => copy::get(&socket, &a.nodes, &a.source, a.dest.as_deref()).await,
    }
}
