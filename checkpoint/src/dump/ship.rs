//! Handing the memory files to a caller while the job still runs (a
//! migration sends them to its target): the pages copied so far, then
//! what each further round rewrote, and after the freeze only what changed
//! since ([`DumpReport::delta`](super::DumpReport::delta)).

use std::collections::HashMap;

use crate::error::{ChkptError, Result};
use crate::image::{self, Names};
use crate::timings::mark;

use super::copy;
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
    /// Called with the SN being written and its memory files after the
    /// rounds copied while the job runs, and again after each further
    /// round while what is sent stays large. An error ends the checkpoint
    /// before the freeze.
    fn staged(&mut self, sn: u32, files: &[Staged]) -> std::result::Result<(), String>;
}

/// Shipping rounds at most (each one followed by a copy round while the
/// job runs, but the last).
const SHIP_ROUNDS: usize = 3;

/// The memory files as they are, each with what was written since the
/// last call.
fn staged(mems: &mut HashMap<i32, ProcMem>, names: &Names) -> Result<Vec<Staged>> {
    let mut out = Vec::new();
    for (&p, mem) in mems.iter_mut() {
        let d = &mut mem.data;
        // the data file is write-only: the same file again, for reading
        let file = {
            use std::os::fd::AsRawFd;
            let fd = format!("/proc/self/fd/{}", d.file.as_raw_fd());
            std::fs::File::open(fd).map_err(|e| ChkptError::io(&d.path, e))?
        };
        out.push(Staged {
            name: names.task_mm(p),
            file,
            len: copy::DATA_OFF + d.slots * image::PAGE,
            ranges: d.drain(),
        });
    }
    Ok(out)
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
        for mem in mems.values_mut() {
            match mem.round(false, tick) {
                Err(e) if !e.is_gone() => return Err(e),
                _ => {}
            }
        }
        mark("precopy");
    }
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
