//! An application some of whose processes moved to other nodes (their
//! stand-ins in its tree): each such part is saved by its node first and
//! held stopped until the tree is saved ([`save_parts`],
//! [`release_parts`]), then copied into the application's directory
//! ([`copy_parts`], `parts/<NODE>/<PID>/`); what was saved of them goes
//! when the checkpoint fails ([`forget_parts`]) or its SN is removed
//! ([`remove_parts`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use checkpoint::capclient::{CapClient, SavedSource};
use checkpoint::checked_dir::CheckedDir;
use checkpoint::dump;
use checkpoint::image::{PartRef, StandInEntry};
use checkpoint::partcopy;
use krg_proto::proc::{HOLD_LIMIT_SECS, OUTPUT_WRITE_LIMIT_SECS};

use super::Cli;

/// The stand-ins of the tree of `pid` (processes of it that moved to
/// other nodes): the node each one's process runs on saves it first,
/// asked through krgd, and holds it stopped until the tree is saved too
/// ([`release_parts`]), so that the parts and the tree are saved as of
/// one moment: nothing a part sends after its save reaches the tree
/// before the tree's.
pub fn save_parts(cli: &Cli, pid: i32) -> Result<Vec<(i32, PartRef)>> {
    let stand_ins: Vec<i32> = dump::tree(pid)?
        .iter()
        .map(|t| t.0)
        .filter(|&p| p != pid && checkpoint::standin::is_stand_in(p))
        .collect();
    let mut parts = Vec::new();
    for s in stand_ins {
        let req = krg_proto::proc::CheckpointAt {
            node: None,
            pid: s,
            full: cli.full,
            kill: false,
            hold: true,
        };
        let saved = CapClient::connect(&cli.socket).and_then(|mut c| c.checkpoint_at(req));
        let r = match saved {
            Ok(r) => r,
            Err(e) => {
                forget_parts(&cli.socket, &parts);
                return Err(e)
                    .with_context(|| format!("process {s} of the tree runs on another node"));
            }
        };
        println!(
            "checkpoint: process {s} runs on node {}: saved there as SN {} in {} ({} task(s), {:.1} MiB), frozen {:.1} ms",
            r.node,
            r.sn,
            r.dir,
            r.tasks,
            r.image_bytes as f64 / (1 << 20) as f64,
            r.frozen_us as f64 / 1000.0
        );
        if r.input_kept > 0 {
            println!(
                "checkpoint: process {s} on node {}: {} bytes of input it had not read yet are kept with its SN",
                r.node, r.input_kept
            );
        }
        if r.output_written == Some(false) {
            eprintln!(
                "checkpoint: warning: process {s} on node {}: what it wrote before its save was not all written out by its stand-in (gone, or its output not read within {} s): the tree is saved without what was still on its way",
                r.node, OUTPUT_WRITE_LIMIT_SECS
            );
        }
        let part = PartRef {
            node: r.node,
            pid: s,
            host_pid: r.host_pid,
            sn: r.sn,
        };
        parts.push((s, part));
    }
    Ok(parts)
}

/// The parts held stopped since they were saved run on (best effort: a
/// node that is not told lets its part run on at its hold limit, which
/// the warning names).
pub fn release_parts(socket: &Path, parts: &[(i32, PartRef)]) {
    for &(s, p) in parts {
        let released =
            CapClient::connect(socket).and_then(|mut c| c.release_held(p.node, p.host_pid, p.sn));
        match released {
            Ok(Some(stopped)) => println!(
                "checkpoint: process {s} on node {} runs on, stopped {:.1} ms in all (from its save until the tree was saved)",
                p.node,
                stopped.as_secs_f64() * 1000.0
            ),
            Ok(None) => eprintln!(
                "checkpoint: warning: process {s} on node {} ran on before the tree was saved (it is held at most {} s): its SN {} is of an earlier moment than the tree's",
                p.node, HOLD_LIMIT_SECS, p.sn
            ),
            Err(e) => eprintln!(
                "checkpoint: warning: process {s} on node {} is held stopped until krgd there lets it run on (within {} s): {e}",
                p.node, HOLD_LIMIT_SECS
            ),
        }
    }
}

/// The checkpoint failed: what other nodes saved for it goes (best
/// effort; a part left is only space, named in the warning).
pub fn forget_parts(socket: &Path, parts: &[(i32, PartRef)]) {
    for &(_, p) in parts {
        let removed =
            CapClient::connect(socket).and_then(|mut c| c.remove_saved(p.node, p.host_pid, p.sn));
        if let Err(e) = removed {
            eprintln!(
                "checkpoint: warning: SN {} of {} on node {} was saved for this checkpoint and is left there: {e}",
                p.sn, p.host_pid, p.node
            );
        }
    }
}

/// `checkpoint rm` of an application SN whose stand-ins' processes other
/// nodes saved: each of those nodes removes its part's SN, through krgd.
pub fn remove_parts(
    socket: &Path,
    app_dir: &Path,
    (pid, sn): (i32, u32),
    parts: &[StandInEntry],
) -> Result<()> {
    let mut left = Vec::new();
    for s in parts {
        let p = s.part;
        remove_copy(app_dir, &p);
        let removed =
            CapClient::connect(socket).and_then(|mut c| c.remove_saved(p.node, p.host_pid, p.sn));
        match removed {
            Ok(()) => println!(
                "checkpoint: removed SN {} of {} on node {} (process {} of the application, saved there)",
                p.sn, p.host_pid, p.node, s.pid
            ),
            Err(e) => left.push(format!("SN {} of {} on node {} ({e})", p.sn, p.host_pid, p.node)),
        }
    }
    if !left.is_empty() {
        bail!(
            "removed SN {sn} of {pid}, but not what other nodes saved of it: {}; remove it there with checkpoint rm",
            left.join("; ")
        );
    }
    Ok(())
}

/// Copy each part's SN (with the SNs of its chain the copy lacks) into
/// the application's directory `app_dir` (`parts/<NODE>/<PID>/`), so
/// that it outlives its node's store: `restart` runs a part whose node is
/// not online from its copy. A part not copied is only on its node, as
/// the warning says; the checkpoint stands.
pub fn copy_parts(socket: &Path, app_dir: &Path, parts: &[(i32, PartRef)]) {
    for &(s, p) in parts {
        let t0 = std::time::Instant::now();
        let copied = CheckedDir::open(app_dir).and_then(|app| {
            let mut src = SavedSource::connect(socket, p.node, p.host_pid)?;
            partcopy::copy::copy_in(&app, (p.node, p.host_pid, p.sn), &mut src)
        });
        match copied {
            Ok(c) => println!(
                "checkpoint: process {s} on node {}: SN {} copied into {} ({:.1} MiB{} in {:.2} s)",
                p.node,
                p.sn,
                c.dir.display(),
                c.bytes as f64 / (1 << 20) as f64,
                match c.sns.len() {
                    0 | 1 => String::new(),
                    n => format!(", with {} earlier SN(s) of its chain,", n - 1),
                },
                t0.elapsed().as_secs_f64()
            ),
            Err(e) => eprintln!(
                "checkpoint: warning: process {s} on node {}: its SN {} is only on that node (not copied into {}: {e})",
                p.node,
                p.sn,
                app_dir.display()
            ),
        }
    }
}

/// `checkpoint rm`: the copy of the part's SN goes too (the SN after it
/// in the copy takes over its pages, as on the part's node). A copy that
/// is not there is nothing to remove.
fn remove_copy(app_dir: &Path, p: &PartRef) {
    let copy = partcopy::copies_of(app_dir, p.node).join(p.host_pid.to_string());
    let global = copy.join(format!("global_v{}.bin", p.sn));
    if !global.exists() {
        return;
    }
    // SAFETY: getuid has no preconditions.
    let caller = unsafe { libc::getuid() };
    match checkpoint::chain::remove(&copy, p.sn, caller) {
        Ok(_) => println!(
            "checkpoint: removed SN {} of its copy in {}",
            p.sn,
            copy.display()
        ),
        Err(e) => eprintln!(
            "checkpoint: warning: SN {} of the copy in {} is left: {e}",
            p.sn,
            copy.display()
        ),
    }
}
