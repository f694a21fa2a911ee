//! Where the data of every saved page is, across the chain of SNs, and
//! its check against the CRCs of the image before anything is started.
//!
//! A task's memory image says, run by run, that its pages are in that file
//! or unchanged since the parent SN; the parent's image of the same process
//! says the same of its own runs, and so on down to a full image. Resolving
//! gives [`Piece`]s: address ranges with the file and offset of their data.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::checked_dir::CheckedDir;
use crate::error::{ChkptError, Result};
use crate::image::{self, FileKind, MmImage, Names, RunData, PAGE};

/// A memory file whose data some task needs, open since it was checked.
pub struct DataFile {
    pub file: File,
    pub path: PathBuf,
    /// The file mapped read-only (shared: the page cache itself), once its
    /// blocks were checked: eager restore copies pages from it into the
    /// tasks ([`fill`](super::fill)).
    pub map: Option<memmap2::Mmap>,
}

/// Whether processes forked from restart inherit its mappings of the
/// memory files (they do not, but for the restorer `--pidns-of` forks: it
/// is restart's child and copies pages from them).
pub fn inherit_maps(files: &[DataFile], inherit: bool) {
    let advice = if inherit {
        memmap2::Advice::DoFork
    } else {
        memmap2::Advice::DontFork
    };
    for m in files.iter().filter_map(|f| f.map.as_ref()) {
        let _ = m.advise(advice);
    }
}

/// Pages `[addr, addr + len)` of a task are at `off` (from the start of
/// the file) in data file `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub addr: u64,
    pub len: u64,
    pub file: usize,
    pub off: u64,
}

/// A block of data (in data file `file`, at `off`) and the CRC it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Check {
    pub file: usize,
    pub off: u64,
    pub len: u64,
    pub crc: u32,
}

/// The check of the block holding byte `off` of data file `file`, in
/// `checks` sorted by (file, offset).
pub fn check_at(checks: &[Check], file: usize, off: u64) -> Option<&Check> {
    let i = checks.partition_point(|c| (c.file, c.off + c.len) <= (file, off));
    checks
        .get(i)
        .filter(|c| c.file == file && c.off <= off && off < c.off + c.len)
}

/// Reads the memory images of a chain, checked like the rest of the image.
pub struct Chain<'a> {
    pub dir: &'a CheckedDir,
    /// The owner every file must have.
    pub owner: u32,
    pub files: Vec<DataFile>,
    checks: Vec<Check>,
}

/// One memory image: its metadata, where its data is, its version.
struct Level {
    mm: MmImage,
    file: usize,
    data_off: u64,
    version: u32,
}

impl<'a> Chain<'a> {
    pub fn new(dir: &'a CheckedDir, owner: u32) -> Self {
        Chain {
            dir,
            owner,
            files: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Open, check and keep the memory image of `pid` in SN `sn`.
    pub fn open_mm(&mut self, sn: u32, pid: i32) -> Result<(MmImage, usize, u64, u32)> {
        let name = Names { sn }.task_mm(pid);
        let (d, f) = image::read_in::<MmImage>(self.dir, &name, FileKind::Mm)?;
        if f.uid != self.owner {
            return Err(ChkptError::Permission(format!(
                "{} belongs to uid {} but the checkpoint's global file to uid {}: refusing a mixed image",
                f.path.display(),
                f.uid,
                self.owner
            )));
        }
        check_runs(&f.path, &d)?;
        self.files.push(DataFile {
            file: f.file,
            path: f.path,
            map: None,
        });
        Ok((d.meta, self.files.len() - 1, d.data_off, d.version))
    }

    /// Every piece of `pid`'s memory as of SN `sn`, whose image `mm` is in
    /// data file `file` (data at `data_off`, format `version`).
    pub fn resolve(
        &mut self,
        sn: u32,
        pid: i32,
        top: (&MmImage, usize, u64, u32),
    ) -> Result<Vec<Piece>> {
        let (mm, file, data_off, version) = top;
        let mut out = Vec::new();
        let mut wanted: Vec<(u64, u64)> = Vec::new();
        let level = Level {
            mm: mm.clone(),
            file,
            data_off,
            version,
        };
        self.take(&level, None, &mut out, &mut wanted)?;
        let mut at = (sn, mm.parent, mm.start_time);
        while !wanted.is_empty() {
            let (child, parent, start) = at;
            let Some(psn) = parent.filter(|&p| p < child) else {
                return Err(ChkptError::bad_image(
                    &self.files[file].path,
                    "pages kept in a parent SN, but no earlier parent is named",
                ));
            };
            let (pmm, pf, poff, pver) = self.open_mm(psn, pid)?;
            if pmm.start_time != start {
                return Err(ChkptError::bad_image(
                    &self.files[pf].path,
                    format!("SN {psn} of process {pid} is another process than SN {child}'s"),
                ));
            }
            at = (psn, pmm.parent, pmm.start_time);
            let lvl = Level {
                mm: pmm,
                file: pf,
                data_off: poff,
                version: pver,
            };
            let mut still = Vec::new();
            self.take(&lvl, Some(&wanted), &mut out, &mut still)?;
            wanted = still;
        }
        out.sort_by_key(|p| p.addr);
        Ok(out)
    }

    /// The pieces `lvl` holds (of `only` ranges, if given); ranges it keeps
    /// in its own parent go to `still`. Every block a piece touches is
    /// added to the checks. A range of `only` that `lvl` does not have at
    /// all is an error: the chain lost it.
    fn take(
        &mut self,
        lvl: &Level,
        only: Option<&[(u64, u64)]>,
        out: &mut Vec<Piece>,
        still: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let mut covered: BTreeMap<u64, u64> = BTreeMap::new();
        for r in lvl
            .mm
            .vmas
            .iter()
            .filter(|v| !v.shared || only.is_none())
            .flat_map(|v| &v.runs)
        {
            let (rs, re) = (r.addr, r.addr + r.pages * PAGE);
            let parts: Vec<(u64, u64)> = match only {
                None => vec![(rs, re)],
                Some(w) => w
                    .iter()
                    .filter(|&&(a, b)| a < re && b > rs)
                    .map(|&(a, b)| (a.max(rs), b.min(re)))
                    .collect(),
            };
            for (a, b) in parts {
                // the parent process's pages: nothing to read. An SN never
                // keeps such pages for a later one: left uncovered there.
                if r.data == RunData::Cow {
                    if only.is_none() {
                        covered.insert(a, b);
                    }
                    continue;
                }
                covered.insert(a, b);
                match &r.data {
                    RunData::Cow => {}
                    RunData::Parent => still.push((a, b)),
                    RunData::Here { off, crcs } => {
                        let at = lvl.data_off + off + (a - rs);
                        out.push(Piece {
                            addr: a,
                            len: b - a,
                            file: lvl.file,
                            off: at,
                        });
                        if lvl.version >= 2 {
                            self.add_checks(lvl, r.addr, r.pages, *off, crcs, (a, b));
                        }
                    }
                }
            }
        }
        if let Some(w) = only {
            let mut have: Vec<(u64, u64)> = covered.into_iter().collect();
            have.sort_unstable();
            for &(a, b) in w {
                let mut at = a;
                for &(s, e) in have.iter().filter(|&&(s, e)| s < b && e > a) {
                    if s > at {
                        break;
                    }
                    at = at.max(e);
                }
                if at < b {
                    return Err(ChkptError::bad_image(
                        &self.files[lvl.file].path,
                        format!("pages {at:#x}-{b:#x} kept for a later SN are missing"),
                    ));
                }
            }
        }
        still.sort_unstable();
        Ok(())
    }

    /// The blocks of a run that `[a, b)` touches, with their CRCs.
    fn add_checks(
        &mut self,
        lvl: &Level,
        addr: u64,
        pages: u64,
        off: u64,
        crcs: &[u32],
        ab: (u64, u64),
    ) {
        let (first, _) = image::run_blocks(addr, pages);
        let (bf, bl) = (ab.0 / image::CRC_BLOCK, (ab.1 - 1) / image::CRC_BLOCK);
        for b in bf..=bl {
            let (s, len) = image::block_part(addr, pages, b);
            if let Some(&crc) = crcs.get((b - first) as usize) {
                self.checks.push(Check {
                    file: lvl.file,
                    off: lvl.data_off + off + (s - addr),
                    len,
                    crc,
                });
            }
        }
    }

    /// The files and the checks of their blocks (sorted).
    pub fn into_parts(mut self) -> (Vec<DataFile>, Vec<Check>) {
        self.checks.sort_unstable();
        self.checks.dedup();
        (self.files, self.checks)
    }

    /// Read every block some piece needs (of `only`, if given) and compare
    /// its CRC, by two threads, straight from the page cache (the files
    /// mapped, not copied: copying was most of the time). The mappings
    /// stay in `files`: eager restore copies from them (and checks the
    /// blocks left out here as it does). Nothing runs yet: a file cut short
    /// meanwhile (SIGBUS) can only end restart.
    pub fn verify(&mut self, only: Option<&[Piece]>) -> Result<()> {
        verify_files(&mut self.files, &mut self.checks, only)
    }
}

/// [`Chain::verify`] on the files and checks a loaded checkpoint kept
/// (`restart --lazy --check-as-loaded` checks the pages children inherit
/// only once it knows which those are).
pub fn verify_files(
    files: &mut [DataFile],
    checks: &mut Vec<Check>,
    only: Option<&[Piece]>,
) -> Result<()> {
    checks.sort_unstable();
    checks.dedup();
    let wanted: Vec<Check> = match only {
        None => checks.clone(),
        Some(pieces) => {
            let mut v: Vec<Check> = pieces
                .iter()
                .flat_map(|p| checks_in(checks, p.file, p.off, p.len))
                .copied()
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        }
    };
    for f in files.iter_mut() {
        let mut opts = memmap2::MmapOptions::new();
        if only.is_none() {
            // every block is read here, now: one walk of the page cache
            opts.populate();
        }
        // SAFETY: a read-only shared mapping of a file we hold open; it
        // is only read, by this process (no task runs before restart is
        // done with it: a file cut short meanwhile, SIGBUS, ends restart
        // and with it every task it made; UFFDIO_COPY reports a vanished
        // page as EFAULT).
        let m = unsafe { opts.map(&f.file) }.map_err(|e| ChkptError::io(&f.path, e))?;
        // Not inherited by the tasks forked from restart (they would
        // unmap it anyway) nor by the page server: the advice only
        // saves work, its failure changes nothing else.
        let _ = m.advise(memmap2::Advice::DontFork);
        f.map = Some(m);
    }
    let next = AtomicUsize::new(0);
    let checks = &wanted;
    let files: &[DataFile] = files;
    let run = || -> Result<()> {
        loop {
            let k = next.fetch_add(256, Ordering::Relaxed);
            let Some(batch) = checks.get(k..(k + 256).min(checks.len())) else {
                return Ok(());
            };
            if batch.is_empty() {
                return Ok(());
            }
            for c in batch {
                check_block(&files[c.file], c)?;
            }
        }
    };
    std::thread::scope(|s| {
        let helper = s.spawn(run);
        let mine = run();
        let theirs = helper
            .join()
            .unwrap_or_else(|_| Err(ChkptError::Thread("a CRC thread panicked".into())));
        mine.and(theirs)
    })
}

/// The checks of the blocks holding bytes `[off, off + len)` of data file
/// `file`, in `checks` sorted by (file, offset).
pub fn checks_in(checks: &[Check], file: usize, off: u64, len: u64) -> &[Check] {
    let lo = checks.partition_point(|c| (c.file, c.off + c.len) <= (file, off));
    let hi = checks.partition_point(|c| (c.file, c.off) < (file, off + len));
    &checks[lo..hi.max(lo)]
}

/// Compare one block of `f`'s mapping with its CRC.
pub fn check_block(f: &DataFile, c: &Check) -> Result<()> {
    let b = f
        .map
        .as_deref()
        .and_then(|m| m.get(c.off as usize..(c.off + c.len) as usize))
        .ok_or_else(|| ChkptError::bad_image(&f.path, "page data ends early"))?;
    if crc32fast::hash(b) != c.crc {
        return Err(bad_data(&f.path, c.off));
    }
    Ok(())
}

fn bad_data(path: &Path, off: u64) -> ChkptError {
    ChkptError::bad_image(
        path,
        format!("page data at offset {off} does not match its CRC (file corrupted)"),
    )
}

/// Runs page aligned, inside their mapping and, for data in this file,
/// inside its data section, with one CRC per block (version 2).
fn check_runs(path: &Path, d: &image::Decoded<MmImage>) -> Result<()> {
    for v in &d.meta.vmas {
        if v.start >= v.end || v.start % PAGE != 0 || v.end % PAGE != 0 {
            return Err(ChkptError::bad_image(
                path,
                format!("bad mapping {:#x}-{:#x}", v.start, v.end),
            ));
        }
        let mut prev = v.start;
        for r in &v.runs {
            let len = r.pages.checked_mul(PAGE);
            let vend = len.and_then(|l| r.addr.checked_add(l));
            if r.pages == 0 || r.addr < prev || r.addr % PAGE != 0 || vend.is_none_or(|e| e > v.end)
            {
                return Err(ChkptError::bad_image(path, "page run outside its mapping"));
            }
            prev = vend.unwrap_or(u64::MAX);
            if r.data == RunData::Cow && !v.inheritable() {
                return Err(ChkptError::bad_image(
                    path,
                    "pages shared with the parent process in a mapping no fork shares",
                ));
            }
            if let RunData::Here { off, crcs } = &r.data {
                let end = len.and_then(|l| off.checked_add(l));
                if end.is_none_or(|e| e > d.data_len) || off % PAGE != 0 {
                    return Err(ChkptError::bad_image(path, "page run outside the data"));
                }
                let (first, last) = image::run_blocks(r.addr, r.pages);
                if d.version >= 2 && crcs.len() as u64 != last - first + 1 {
                    return Err(ChkptError::bad_image(path, "page run without its CRCs"));
                }
            }
        }
    }
    Ok(())
}
