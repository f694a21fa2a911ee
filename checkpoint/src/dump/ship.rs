//! Handing the memory files to a caller while the job still runs (a
//! migration sends them to its target): the first round's pages part by
//! part as they are copied (the sending of one part overlaps the copy of
//! the next), then what each further round rewrote, and after the freeze
//! only what changed since ([`DumpReport::delta`](super::DumpReport::delta)).

use std::collections::HashMap;

use crate::error::{ChkptError, Result};
use crate::image::{self, Names};
use crate::timings::mark;

use super::copy::{self, DataFile};
use super::precopy::ProcMem;
use super::ROUND_SMALL;

/// One memory file as it is before the freeze: its pages so far, which the
/// frozen round may still rewrite (see [`DumpReport::delta`](super::DumpReport::delta)).
pub struct Staged {
    /// Its name in the checkpoint directory.
    pub name: String,
    /// The file (in the staging directory), open for reading.
    pub file: std::fs::File,
    /// Its length for now (page data only).
    pub len: u64,
    /// The byte ranges written since the previous [`Ship::staged`].
    pub ranges: Vec<(u64, u64)>,
}

/// A caller that sends the memory files while the job runs (a migration),
/// so that only what changes after that is left for the frozen part.
pub trait Ship {
    /// Called with the SN being written and memory files: during the
    /// first round, with one file and the part of it just copied; then
    /// with every file after the rounds copied while the job runs, and
    /// again after each further round while what is sent stays large. It
    /// may return before the ranges are sent, but never before the file
    /// list it was given is known to the receiver. An error ends the
    /// checkpoint before the freeze.
    fn staged(&mut self, sn: u32, files: &[Staged]) -> std::result::Result<(), String>;
    /// Wait until every range handed over is sent. Called before ranges
    /// that may overlap those already handed over are (a later round's
    /// rewrite must not be overtaken by the older bytes), and before the
    /// freeze. An error ends the checkpoint before the freeze.
    fn flush(&mut self) -> std::result::Result<(), String>;
}

/// `ship` again, for a shorter while (an `Option` of a reference to a
/// trait object is not reborrowed on its own).
pub(super) fn reborrow<'b>(ship: &'b mut Option<&mut dyn Ship>) -> Option<&'b mut dyn Ship> {
    match ship {
        Some(s) => Some(&mut **s),
        None => None,
    }
}

/// Shipping rounds at most (each one followed by a copy round while the
/// job runs, but the last).
const SHIP_ROUNDS: usize = 3;

/// The memory files as they are, each with what was written since the
/// last call.
fn staged(mems: &mut HashMap<i32, ProcMem>, names: &Names) -> Result<Vec<Staged>> {
    mems.iter_mut()
        .map(|(&p, mem)| staged_one(names.task_mm(p), &mut mem.data))
        .collect()
}

/// Memory file `name` (data `d`) as it is, with what was written since
/// the last call.
fn staged_one(name: String, d: &mut DataFile) -> Result<Staged> {
    // the data file is write-only: the same file again, for reading
    let file = {
        use std::os::fd::AsRawFd;
        let fd = format!("/proc/self/fd/{}", d.file.as_raw_fd());
        std::fs::File::open(fd).map_err(|e| ChkptError::io(&d.path, e))?
    };
    Ok(Staged {
        name,
        file,
        len: copy::DATA_OFF + d.slots * image::PAGE,
        ranges: d.drain(),
    })
}

/// Round 0 of the memory `mem`, each part handed to `ship` as soon as it
/// is copied (SN `names.sn`).
pub(super) fn first_round(
    ship: &mut dyn Ship,
    mem: &mut ProcMem,
    names: &Names,
    tick: &dyn Fn(u64),
) -> Result<u64> {
    let name = names.task_mm(mem.pid);
    let mut part_done = |d: &mut DataFile| -> Result<()> {
        let file = staged_one(name.clone(), d)?;
        if file.ranges.is_empty() {
            return Ok(());
        }
        ship.staged(names.sn, &[file]).map_err(ChkptError::Ship)
    };
    mem.round_in_parts(false, tick, Some(&mut part_done))
}

/// Hand the pages copied so far to `ship`, then copy and hand over what
/// changed meanwhile while that stays large. Returns whether anything was
/// handed over.
pub(super) fn ship_rounds(
    ship: &mut dyn Ship,
    mems: &mut HashMap<i32, ProcMem>,
    names: &Names,
    tick: &dyn Fn(u64),
) -> Result<bool> {
    if mems.is_empty() {
        return Ok(false);
    }
    for n in 0..SHIP_ROUNDS {
        // what the rounds since rewrote must not be overtaken by what
        // was sent of it before
        ship.flush().map_err(ChkptError::Ship)?;
        let files = staged(mems, names)?;
        let bytes: u64 = files
            .iter()
            .flat_map(|f| &f.ranges)
            .map(|r| r.1 - r.0)
            .sum();
        ship.staged(names.sn, &files).map_err(ChkptError::Ship)?;
        mark("ship");
        if bytes < ROUND_SMALL || n + 1 == SHIP_ROUNDS {
            break;
        }
        // (the copy of the next round overlaps the sending)
        for mem in mems.values_mut() {
            match mem.round(false, tick) {
                Err(e) if !e.is_gone() => return Err(e),
                _ => {}
            }
        }
        mark("precopy");
    }
    ship.flush().map_err(ChkptError::Ship)?;
    mark("ship");
    Ok(true)
}

/// What each memory file holds beyond what was shipped: its header, the
/// pages written since, and its metadata (after the page data).
pub(super) fn delta(
    mems: &mut HashMap<i32, ProcMem>,
    names: &Names,
) -> Result<HashMap<String, Vec<(u64, u64)>>> {
    let mut out = HashMap::new();
    for (&p, mem) in mems.iter_mut() {
        let d = &mut mem.data;
        let len = d
            .file
            .metadata()
            .map_err(|e| ChkptError::io(&d.path, e))?
            .len();
        let mut ranges = vec![(0, copy::DATA_OFF.min(len))];
        ranges.extend(d.drain());
        ranges.push(((copy::DATA_OFF + d.slots * image::PAGE).min(len), len));
        ranges.retain(|r| r.1 > r.0);
        out.insert(names.task_mm(p), ranges);
    }
    Ok(out)
}

/// Where the page data of each memory file is: from its header to its
/// metadata.
pub(super) fn page_data(
    mems: &HashMap<i32, ProcMem>,
    names: &Names,
) -> HashMap<String, (u64, u64)> {
    mems.iter()
        .map(|(&p, mem)| {
            let end = copy::DATA_OFF + mem.data.slots * image::PAGE;
            (names.task_mm(p), (copy::DATA_OFF, end))
        })
        .collect()
}
