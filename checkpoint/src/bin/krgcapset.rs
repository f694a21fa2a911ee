//! `krgcapset`: set or show the CHECKPOINTABLE capability of a process.

use std::path::PathBuf;

use anyhow::{bail, Result};
use checkpoint::capclient;
use clap::Parser;
use krg_proto::chkpt::ChkptRequest;

/// Give a process (by default the shell that runs this command) the
/// CHECKPOINTABLE capability, or take it away. Every process it starts
/// afterwards inherits the capability; the node's krgd keeps track.
#[derive(Parser)]
#[command(version)]
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
    /// krgd admin socket (default: $KRG_SOCKET or /run/krg/krgd.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn run(cli: Cli) -> Result<()> {
    // SAFETY: getppid has no preconditions.
    let pid = cli.pid.unwrap_or_else(|| unsafe { libc::getppid() });
    let sock = capclient::socket_path(cli.socket);
    if let Some(c) = &cli.caps {
        let enable = match c.as_str() {
            "+CHECKPOINTABLE" => true,
            "-CHECKPOINTABLE" => false,
            other => bail!(
                "unknown capability change {other:?} (use +CHECKPOINTABLE or -CHECKPOINTABLE)"
            ),
        };
        capclient::call(&sock, ChkptRequest::SetCheckpointable { pid, enable })?;
    } else if !cli.show {
        bail!("nothing to do: give -d +CHECKPOINTABLE, -d -CHECKPOINTABLE or --show");
    }
    if cli.show {
        let on = capclient::call(&sock, ChkptRequest::Query { pid })?.checkpointable;
        println!("{pid}: {}", if on { "CHECKPOINTABLE" } else { "(none)" });
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("krgcapset: {e:#}");
        std::process::exit(1);
    }
}
