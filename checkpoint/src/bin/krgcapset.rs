//! `krgcapset`: set or show the CHECKPOINTABLE capability of a process.

use std::path::PathBuf;

use anyhow::{bail, Result};
use checkpoint::capclient::CapClient;
use clap::Parser;
use krg_proto::chkpt::ChkptRequest;

/// Give a process (by default the shell that runs this command) the
/// CHECKPOINTABLE capability, or take it away. Every process it starts
/// afterwards inherits the capability; the node's krgd keeps track.
#[derive(Parser)]
#[command(name = "krgcapset", version)]
struct Cli {
    /// `+CHECKPOINTABLE` to set, `-CHECKPOINTABLE` to clear.
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

fn run(cli: Cli) -> Result<()> {
    // SAFETY: getppid has no preconditions.
    let pid = cli.pid.unwrap_or_else(|| unsafe { libc::getppid() });
    let change = match cli.caps.as_deref() {
        Some("+CHECKPOINTABLE") => Some(true),
        Some("-CHECKPOINTABLE") => Some(false),
        Some(other) => {
            bail!("unknown capability change {other:?} (use +CHECKPOINTABLE or -CHECKPOINTABLE)")
        }
        None if !cli.show => {
            bail!("nothing to do: give -d +CHECKPOINTABLE, -d -CHECKPOINTABLE or --show")
        }
        None => None,
    };
    let mut krgd = CapClient::connect(&cli.socket)?;
    if let Some(enable) = change {
        krgd.call(ChkptRequest::SetCheckpointable { pid, enable })?;
    }
    if cli.show {
        let on = krgd.call(ChkptRequest::Query { pid })?.checkpointable;
        println!("{pid}: {}", if on { "CHECKPOINTABLE" } else { "(none)" });
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
