//! krgadm: administer a krg cluster through the local krgd.

mod manpage;
mod print;
mod until;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};
use krg_proto::admin::{AdminRequest, AdminResponse};
use krg_proto::client::AdminClient;
use krg_proto::cluster::{
    CheckoutRequest, ClusterReply, ClusterRequest, Mac, NodeSelector, ReleaseRequest,
};
use krg_proto::sched::{SchedReply, SchedRequest};

#[derive(Parser)]
#[command(name = "krgadm", version, about = "Administer a krg cluster", long_about = LONG_ABOUT)]
struct Cli {
    /// The local krgd's admin socket.
    #[arg(long, global = true, env = "KRG_SOCKET", default_value = krg_proto::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

const LONG_ABOUT: &str = "\
krgadm talks to the krgd of this node (over its admin socket) to form, inspect
and change the cluster. Membership changes are committed through the cluster's
replicated log: a command returns once every online member has applied it, and
fails with a clear message (and changes nothing) when the cluster has no quorum.

Examples:
  krgadm cluster start          form the cluster from every present node
  krgadm cluster status         session, epoch, leader, members, health
  krgadm nodes status           one row per known node
  krgadm nodes add -n16:18      hot-add nodes 16 and 18
  krgadm nodes add -n 3-7       hot-add nodes 3 to 7
  krgadm nodes add -m 00:04:61:aa:6e:6e
  krgadm nodes add -a           hot-add every present node
  krgadm nodes del -n21:34      remove nodes 21 and 34
  krgadm nodes checkout -n 5-8 --for alice --until +4h --reason benchmark
  krgadm nodes release -n 5-8   give them back (their owner, or root)
  krgadm sched place            which node should run a new process
  krgadm cluster stop";

#[derive(Subcommand)]
enum Command {
    /// Start, stop or inspect the cluster.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Inspect, add or remove nodes.
    Nodes {
        #[command(subcommand)]
        action: NodesAction,
    },
    /// Ask the global scheduler.
    Sched {
        #[command(subcommand)]
        action: SchedAction,
    },
}

#[derive(Subcommand)]
enum SchedAction {
    /// Which node should run a new process, as the placement policy decides.
    Place {
        /// Scheduler (directory under /config/krg_scheduler/schedulers) to ask;
        /// by default the first one with a placement policy.
        #[arg(long, value_name = "NAME")]
        scheduler: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Form the cluster from every present node of this session.
    Start,
    /// Dissolve the cluster: every member leaves (the daemons keep running).
    Stop,
    /// Session id, epoch, leader, members and health.
    Status,
}

#[derive(Subcommand)]
enum NodesAction {
    /// One row per known node: id, MAC, address, state, voter, owner and until.
    Status,
    /// Hot-add present nodes to the cluster.
    Add(Selection),
    /// Remove members from the cluster.
    #[command(after_help = DEL_HELP)]
    Del(Selection),
    /// Check nodes out: until the deadline, only their owner's (and root's)
    /// jobs run there. All the nodes or none; a node another user holds is
    /// refused with their name.
    #[command(after_help = CHECKOUT_HELP)]
    Checkout(Checkout),
    /// Give checked-out nodes back (their owner, or root; root needs
    /// --force for another user's). Nodes not checked out are skipped; if
    /// one is another user's, nothing is released.
    Release(Release),
}

const DEL_HELP: &str = "\
Examples:
  krgadm nodes del -n 3
  krgadm nodes del -n21:34

A live member is first shown as leaving while its work moves to the other
members: its CAN_MIGRATE processes, then its kDFS files (copied to the online
member with the most free space, the root directory too when it is the kDFS
root node; its units of striped files to another holder).
The command answers once the nodes are removed. A failed member is removed at
once: there is nothing to take from a node that does not answer.";

const CHECKOUT_HELP: &str = "\
Examples:
  krgadm nodes checkout -n 5-8 --until +4h --reason benchmark
  krgadm nodes checkout -n 3:9 --for alice --until 2026-12-24T18:00:00Z   (root only)
  krgadm nodes checkout -n 5 --until +30m      (again, by the owner: a new deadline)

Checkouts are committed in the cluster's replicated log and survive restarts.
A checkout ends at its deadline by each node's clock (keep clocks in sync).";

#[derive(Args)]
struct Checkout {
    /// Node ids separated by ':' (e.g. -n16:18), with ranges (-n 5-8).
    #[arg(short = 'n', long = "nodes", value_name = "LIST")]
    nodes: String,
    /// For whom (user name or uid); default: you. Only root may name another user.
    #[arg(long = "for", value_name = "USER")]
    user: Option<String>,
    /// When the checkout ends: +4h, +30m, +90s, +2d, +1h30m, or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    until: String,
    /// Why (shown by nodes status and the status page).
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
}

#[derive(Args)]
struct Release {
    /// Node ids separated by ':' (e.g. -n16:18), with ranges (-n 5-8).
    #[arg(short = 'n', long = "nodes", value_name = "LIST")]
    nodes: String,
    /// Root: release nodes another user has checked out.
    #[arg(long)]
    force: bool,
}

fn node_list(text: &str) -> Result<Vec<krg_proto::NodeId>> {
    krg_proto::nodeset::parse_node_list(text).map_err(|e| anyhow!(e))
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Selection {
    /// Node ids separated by ':' (e.g. -n16:18), with ranges (-n 3-7).
    #[arg(short = 'n', long = "nodes", value_name = "LIST")]
    nodes: Option<String>,
    /// MAC addresses separated by ',' (e.g. -m 00:04:61:aa:6e:6e).
    #[arg(short = 'm', long = "macs", value_name = "MACS")]
    macs: Option<String>,
    /// add: every present node; del: every member but the one answering.
    #[arg(short = 'a', long = "all")]
    all: bool,
}

impl Selection {
    fn to_selector(&self) -> Result<NodeSelector> {
        if let Some(list) = &self.nodes {
            return krg_proto::nodeset::parse_node_list(list)
                .map(NodeSelector::Ids)
                .map_err(|e| anyhow!(e));
        }
        if let Some(macs) = &self.macs {
            let macs: Vec<Mac> = macs
                .split(',')
                .map(|m| m.trim().parse::<Mac>())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow!(e))?;
            return Ok(NodeSelector::Macs(macs));
        }
        Ok(NodeSelector::AllPresent)
    }
}

fn main() -> ExitCode {
    krg_clidoc::intercept::<Cli>(&manpage::PAGE);
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("krgadm: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krgadm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn call(cli: &Cli, request: AdminRequest) -> Result<AdminResponse> {
    let mut client = AdminClient::connect(&cli.socket).await?;
    match client.call(&request).await.context("krgd did not answer")? {
        AdminResponse::Error(e) => Err(anyhow!(e.message)),
        other => Ok(other),
    }
}

async fn place(cli: &Cli, scheduler: Option<String>) -> Result<()> {
    let request = AdminRequest::Sched(SchedRequest::Place { scheduler });
    match call(cli, request).await? {
        AdminResponse::Sched(SchedReply::Placement { node, reason }) => {
            if cli.json {
                println!("{}", serde_json::json!({ "node": node, "reason": reason }));
            } else {
                println!("node {node}: {reason}");
            }
            Ok(())
        }
        other => Err(anyhow!("unexpected answer from krgd: {other:?}")),
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let request = match &cli.command {
        Command::Sched {
            action: SchedAction::Place { scheduler },
        } => {
            return place(cli, scheduler.clone()).await;
        }
        Command::Cluster { action } => match action {
            ClusterAction::Start => ClusterRequest::Start,
            ClusterAction::Stop => ClusterRequest::Stop,
            ClusterAction::Status => ClusterRequest::Status,
        },
        Command::Nodes { action } => match action {
            NodesAction::Status => ClusterRequest::NodesStatus,
            NodesAction::Add(sel) => ClusterRequest::Add(sel.to_selector()?),
            NodesAction::Del(sel) => ClusterRequest::Del(sel.to_selector()?),
            NodesAction::Checkout(c) => ClusterRequest::Checkout(CheckoutRequest {
                nodes: node_list(&c.nodes)?,
                user: c.user.clone(),
                until: until::parse(&c.until).map_err(|e| anyhow!(e))?,
                reason: c.reason.clone(),
            }),
            NodesAction::Release(r) => ClusterRequest::Release(ReleaseRequest {
                nodes: node_list(&r.nodes)?,
                force: r.force,
            }),
        },
    };
    let reply = match call(cli, AdminRequest::Cluster(request)).await? {
        AdminResponse::Cluster(r) => r,
        other => return Err(anyhow!("unexpected answer from krgd: {other:?}")),
    };
    match reply {
        ClusterReply::Status(s) | ClusterReply::Changed(s) => print::status(&s, cli.json),
        ClusterReply::Nodes(rows) => print::nodes(&rows, cli.json),
        ClusterReply::Owned(rows) => print::owned(&rows, cli.json),
    }
    Ok(())
}
