//! `restart PID SN`: rebuild the tree with its recorded PIDs.
//!
//! No code of ours runs inside a restored process. The restarter forks the
//! root with clone3(set_tid), which stops itself for ptrace; every further
//! step — forking children with their PIDs, unmapping the restarter's memory,
//! mapping the recorded areas and reading the pages into them from the image
//! with pread (private anonymous pages are copied in by restart itself,
//! [`fill`]), fds, cwd, signals, credentials — is a system call injected
//! over ptrace at a `syscall` instruction on a page the restarter mapped at
//! an address no recorded mapping uses. Registers go in last, then detach.

//! - [`load`] — read and check every file (before anything is started)
//! - [`pages`] — where each page's data is across a chain of SNs, CRCs
//! - [`owner`] — what a user's image may ask of root
//! - [`tree`] — fork the tasks with their PIDs ([`fork`]; [`zombie`] for
//!   zombies, [`standin`] for stand-ins), SysV objects, shared fds; [`plan`] where each task's pages
//!   go, who inherits whose
//! - [`task`] — one task's restore, in order ([`seccomp`] before the
//!   credentials drop, [`timers`] last)
//! - [`files`] ([`anon`], [`sockets`] with [`sockopts`], [`tcp`] and
//!   [`queues`] (their common calls in [`sockcall`]), [`held`], [`mqueue`],
//!   [`pty`]; [`rootfile`]) — every open
//!   file of the tree, made once in the root ([`held_check`]: what an
//!   image may ask of them)
//! - [`mm`] ([`mapfiles`]), [`fds`] ([`locks`]), [`sig`] — memory, fd table (and file
//!   locks), signal state of a task; [`attrs`] its other attributes
//!   (prctl, scheduling, capabilities, …)
//! - [`ctx`] — the injection area and what every step works with
//! - [`fill`] — eager restore: private anonymous pages copied in by restart;
//!   [`pread`] the pages a task reads in itself
//! - [`lazy`], [`serve`] — `--lazy`: pages left out, and their server
//! - [`sysv`] — recreating SysV IPC objects
//! - [`pidns`] — into a job's PID namespace; [`jobns`] what a job's
//!   checkpoint records of its namespace
//! - [`gate`] — `--gate-fd`: the tree runs only once the caller says so

mod anon;
mod attrs;
mod ctx;
mod fds;
pub mod fetch;
mod files;
mod fill;
mod fork;
pub mod gate;
mod held;
mod held_check;
pub mod jobns;
mod lazy;
pub mod load;
mod locks;
mod mapfiles;
mod mm;
mod mqueue;
pub mod owner;
mod pages;
pub mod pidns;
mod plan;
mod pread;
mod pty;
mod queues;
mod rootfile;
mod seccomp;
mod serve;
mod sig;
mod sockcall;
mod sockets;
mod sockopts;
mod standin;
mod sysv;
mod task;
mod tcp;
mod timers;
mod tree;
mod zombie;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{ChkptError, Result};
use crate::store;

pub use load::StandInStart;
pub use load::{load, Loaded, LoadedTask};
pub use owner::ImageOwner;
pub use standin::listed as stand_ins_of;

use ctx::AREA_LEN;
use fork::PidPolicy;
use tree::restore_tree;

pub struct RestoreOptions {
    pub root: PathBuf,
    /// Whose node file to restart; `None`: the one node the checkpoint holds.
    pub node: Option<u32>,
    /// How long to wait for a recorded PID still held (e.g. a zombie not yet reaped).
    pub pid_wait: Duration,
    /// Let the kernel choose new PIDs instead of the recorded ones.
    pub new_pids: bool,
    /// Let the tasks run before their private anonymous pages are in:
    /// a page server brings each in on first touch, and the rest behind.
    pub lazy: bool,
    /// With `lazy`: do not check page data before the tasks run; each block
    /// is checked as it loads (a mismatch then kills the tree).
    pub check_as_loaded: bool,
    /// `--inherit-fd N:PATH`: what fd N of the job gets when it led
    /// outside the tree (opened as the job's user).
    pub inherit_fds: Vec<(i32, String)>,
    /// `--pidns-of`: restore into a `krg run` job's PID namespace (a
    /// migrated job), with the job's own PIDs.
    pub pidns: Option<pidns::PidNsTarget>,
    /// `--fetch-fd`: page data still arriving, asked for on this fd before
    /// it is read ([`fetch`]); with `lazy` and `check_as_loaded`.
    pub fetch_fd: Option<i32>,
    /// `--ctty-fg PGID`: the root leads a session whose controlling
    /// terminal is its fd 0 (restart's stdin, a terminal), process group
    /// PGID (a PID of the image) in the foreground: krgd moving a job that
    /// runs on a terminal (`krg run -t`) gives it a new one on the target.
    pub ctty_fg: Option<i32>,
    /// `--gate-fd`: let the restored tree run only once the caller writes
    /// [`gate::GO`] on this fd (see [`gate`]).
    pub gate_fd: Option<i32>,
    /// `--stand-in PID:TOKEN` (krgd): the image's stand-ins are made
    /// again, each with its token (see [`standin`]).
    pub stand_ins: Option<StandInStart>,
}

#[derive(Debug)]
pub struct RestoreReport {
    pub pids: Vec<i32>,
    /// `--lazy`: the PID of the page server (none if no page was left).
    pub server: Option<i32>,
    /// Where the time went, phase by phase (see [`crate::timings`]).
    pub phases: Vec<crate::timings::Phase>,
}

pub fn restart(app: i32, sn: u32, opts: &RestoreOptions) -> Result<RestoreReport> {
    crate::timings::start();
    let dir = store::app_dir(&opts.root, app);
    if opts.check_as_loaded && !opts.lazy {
        return Err(ChkptError::Usage(
            "--check-as-loaded goes with --lazy (eager restore checks pages as it copies them)"
                .into(),
        ));
    }
    let check = match (opts.lazy, opts.check_as_loaded) {
        (false, _) => load::PageCheck::AsCopied,
        (true, false) => load::PageCheck::First,
        (true, true) => load::PageCheck::AsLoaded,
    };
    if opts.fetch_fd.is_some() && check != load::PageCheck::AsLoaded {
        return Err(ChkptError::Usage(
            "--fetch-fd goes with --lazy and --check-as-loaded".into(),
        ));
    }
    let mut loaded = load::load_checked(&dir, sn, opts.node, check)?;
    if !loaded.global.pidns.is_empty() && opts.pidns.is_none() {
        // its PIDs in restart's namespace were not its own: given back
        // here, getpid() would change under the program
        return Err(ChkptError::Usage(format!(
            "SN {sn} of {app} ran in a PID namespace of its own (a krg job): it comes back as a job, through krgd (run restart without --pidns-of on a node whose krgd runs)"
        )));
    }
    if !loaded.node.stand_ins.is_empty() {
        if opts.stand_ins.is_none() {
            let on: Vec<String> = loaded
                .node
                .stand_ins
                .iter()
                .map(|s| format!("{} on node {}", s.pid, s.part.node))
                .collect();
            return Err(ChkptError::Usage(format!(
                "SN {sn} of {app} holds processes that ran on other nodes ({}): krgd restarts it, each part on its node (run restart as root on a node whose krgd runs)",
                on.join(", ")
            )));
        }
        if opts.new_pids || opts.pidns.is_some() {
            return Err(ChkptError::Usage(format!(
                "SN {sn} of {app} holds stand-ins, which keep their PIDs: --new-pids and --pidns-of do not apply"
            )));
        }
        loaded.stand_in_start = opts.stand_ins.clone();
    }
    if let Some(fd) = opts.fetch_fd {
        // SAFETY: the descriptor was given to this process for this use.
        loaded.fetch = Some(unsafe { fetch::Fetch::from_raw_fd(fd) }?);
    }
    if check == load::PageCheck::AsLoaded {
        // the pages children inherit are copied in before they are
        // forked, not left to the page server: checked now
        let inherit = plan::Inheritance::of(&loaded.tasks)?;
        let split = plan::split_pieces(&loaded.tasks, &inherit, true);
        if let Some(f) = &loaded.fetch {
            // everything restart reads itself: those pages, and the ones
            // the tasks read (outside the lazy mappings)
            let ranges: Vec<(usize, u64, u64)> = split
                .iter()
                .flat_map(|[read, _, now]| read.iter().chain(now))
                .map(|p| (p.file, p.off, p.len))
                .collect();
            f.need(&loaded.files, &loaded.checks, &ranges)?;
            crate::timings::mark("fetch");
        }
        let now: Vec<pages::Piece> = split.into_iter().flat_map(|[_, _, now]| now).collect();
        if !now.is_empty() {
            pages::verify_files(&mut loaded.files, &mut loaded.checks, Some(&now))?;
        }
    }
    let images: Vec<&crate::image::TaskImage> = loaded.tasks.iter().map(|t| &t.task).collect();
    held_check::check_inherit(&images, &opts.inherit_fds)?;
    held_check::check_pidfds(&images)?;
    loaded.inherit_fds = opts.inherit_fds.clone();
    loaded.ctty_fg = opts.ctty_fg;
    if let Some(fd) = opts.gate_fd {
        loaded.gate = Some(gate::take(fd)?);
    }
    crate::timings::mark("load");
    if opts.new_pids && loaded.tasks.iter().any(|t| t.task.threads.len() > 1) {
        return Err(ChkptError::Usage(
            "--new-pids does not handle multi-threaded processes (their TIDs live in their memory)"
                .into(),
        ));
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Err(ChkptError::Permission(
            "restart must run as root (clone3 with a chosen PID needs CAP_CHECKPOINT_RESTORE)"
                .into(),
        ));
    }
    if let Some(ns) = &opts.pidns {
        if opts.new_pids {
            return Err(ChkptError::Usage(
                "--pidns-of does not go with --new-pids".into(),
            ));
        }
        pidns::translate(&mut loaded, &ns.map)?;
    }
    let area = map_area(&loaded)?;
    let pids = PidPolicy {
        wait: opts.pid_wait,
        fresh: opts.new_pids,
        rejoin_mnt: None,
    };
    let r = match &opts.pidns {
        Some(ns) => {
            let wanted: Vec<i32> = ns.map.iter().map(|&(_, inner)| inner).collect();
            pages::inherit_maps(&loaded.files, true);
            pidns::inside(ns.init, &wanted, |mnt| {
                pages::inherit_maps(&loaded.files, false);
                let pids = PidPolicy {
                    rejoin_mnt: Some(mnt),
                    ..pids
                };
                restore_tree(&mut loaded, area, pids, opts.lazy)
            })
        }
        None => restore_tree(&mut loaded, area, pids, opts.lazy),
    };
    // SAFETY: unmapping the area we mapped in this process.
    unsafe { libc::munmap(area as *mut libc::c_void, AREA_LEN as usize) };
    r.map(|r| RestoreReport {
        pids: r.pids,
        server: r.server,
        phases: crate::timings::take(),
    })
}

/// Map the injection area in the restarter (children inherit it) at an
/// address far from every recorded mapping.
fn map_area(l: &Loaded) -> Result<u64> {
    let mut used: Vec<(u64, u64)> = l
        .tasks
        .iter()
        .flat_map(|t| t.mm.vmas.iter().map(|v| (v.start, v.end)))
        .collect();
    used.sort_unstable();
    const MARGIN: u64 = 64 << 20;
    let mut cand = 0x1000_0000u64;
    let fits = |c: u64| {
        used.iter()
            .all(|&(s, e)| c + AREA_LEN + MARGIN <= s || c >= e + MARGIN)
    };
    for _ in 0..100_000 {
        if fits(cand) {
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let p = unsafe {
                libc::mmap(
                    cand as *mut libc::c_void,
                    AREA_LEN as usize,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p as u64 == cand {
                // `syscall` then `jmp .`: a child forked by an injected clone3
                // spins on the jmp until we attach to it.
                // SAFETY: the page is ours, writable and at least 4 bytes long.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        [0x0fu8, 0x05, 0xeb, 0xfe].as_ptr(),
                        p as *mut u8,
                        4,
                    )
                };
                return Ok(cand);
            }
            if p != libc::MAP_FAILED {
                // SAFETY: an old kernel ignoring NOREPLACE gave us another address.
                unsafe { libc::munmap(p, AREA_LEN as usize) };
            }
        }
        cand += MARGIN;
    }
    Err(ChkptError::TooLarge(
        "the address space left for restart's injection area".into(),
    ))
}
