//! `krgcapset`: set or show the CHECKPOINTABLE and CAN_MIGRATE capabilities of a process.

use std::path::PathBuf;

use anyhow::{bail, Result};
use checkpoint::capclient::CapClient;
use clap::Parser;
use krg_proto::chkpt::ChkptRequest;

/// Give a process (by default the shell that runs this command) the
/// CHECKPOINTABLE or CAN_MIGRATE capability, or take it away. Every process it starts
/// afterwards inherits the capability; the node's krgd keeps track.
#[derive(Parser)]
#[command(name = "krgcapset", version)]
struct Cli {
    /// `+CHECKPOINTABLE`, `+CAN_MIGRATE` (or both: `+CHECKPOINTABLE,CAN_MIGRATE`) to set, `-NAME` to clear.
    #[arg(short = 'd', long = "capabilities", allow_hyphen_values = true)]
    caps: Option<String>,
    /// Act on this process instead of the parent shell.
    #[arg(short = 'k', long = "pid")]
    pid: Option<i32>,
    /// Print the capabilities of the process.
    #[arg(short, long)]
    show: bool,
    /// krgd admin socket.
    #[arg(long, env = "KRG_SOCKET", default_value = krg_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// The capabilities a `-d` argument names: `+NAME[,NAME...]` or `-NAME...`.
fn parse_change(arg: &str) -> Result<(bool, Vec<&str>)> {
    let (enable, names) = match arg.split_at_checked(1) {
        Some(("+", rest)) => (true, rest),
        Some(("-", rest)) => (false, rest),
        _ => bail!(
            "capability change {arg:?} must start with + or - (e.g. +CHECKPOINTABLE,CAN_MIGRATE)"
        ),
    };
    let names: Vec<&str> = names.split(',').collect();
    if let Some(bad) = names
        .iter()
        .find(|n| !matches!(**n, "CHECKPOINTABLE" | "CAN_MIGRATE"))
    {
        bail!("unknown capability {bad:?} (known: CHECKPOINTABLE, CAN_MIGRATE)");
    }
    Ok((enable, names))
}

fn run(cli: Cli) -> Result<()> {
    // SAFETY: getppid has no preconditions.
    let pid = cli.pid.unwrap_or_else(|| unsafe { libc::getppid() });
    let change = cli.caps.as_deref().map(parse_change).transpose()?;
    if change.is_none() && !cli.show {
        bail!(
            "nothing to do: give -d +CHECKPOINTABLE, -d +CAN_MIGRATE (or -NAME to clear) or --show"
        );
    }
    let mut krgd = CapClient::connect(&cli.socket)?;
    if let Some((enable, names)) = change {
        for name in names {
            if name == "CAN_MIGRATE" {
                krgd.call_migrate(ChkptRequest::SetCanMigrate { pid, enable })?;
            } else {
                krgd.call(ChkptRequest::SetCheckpointable { pid, enable })?;
            }
        }
    }
    if cli.show {
        let mut held = Vec::new();
        if krgd.call(ChkptRequest::Query { pid })?.checkpointable {
            held.push("CHECKPOINTABLE");
        }
        if krgd.call_migrate(ChkptRequest::QueryCanMigrate { pid })? {
            held.push("CAN_MIGRATE");
        }
        let shown = if held.is_empty() {
            "(none)".to_string()
        } else {
            held.join(",")
        };
        println!("{pid}: {shown}");
    }
    Ok(())
}

fn main() {
    krg_clidoc::intercept::<Cli>(&PAGE);
    if let Err(e) = run(Cli::parse()) {
        eprintln!("krgcapset: {e:#}");
        std::process::exit(1);
    }
}

/// The hand-written part of this binary's man page (`--generate man`).
const PAGE: krg_clidoc::Page = krg_clidoc::Page {
    section: "1",
    sections: &[
        krg_clidoc::Section {
            title: "EXIT STATUS",
            body: "0: done.
1: refused or failed (no krgd answering, not your process); one line says why.
2: bad usage.",
        },
        krg_clidoc::Section {
            title: "EXAMPLES",
            body: "  krgcapset -d +CHECKPOINTABLE
  krgcapset -k 4242 -d +CHECKPOINTABLE
  krgcapset --show -k 4242",
        },
        krg_clidoc::Section {
            title: "SEE ALSO",
            body: "checkpoint(1), restart(1), krgcapset(1), krgd(8)",
        },
    ],
};
