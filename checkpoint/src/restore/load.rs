//! Reading a checkpoint for restart: every file opened by descriptor,
//! decoded, checked, and its owner's rights applied, before anything runs.

use std::path::{Path, PathBuf};

use crate::checked_dir::{CheckedDir, OpenedFile};
use crate::error::{ChkptError, Result};
use crate::image::{
    self, Decoded, FdKind, FileKind, GlobalImage, MmImage, Names, NodeImage, TaskImage, VmaKind,
};

use super::owner::ImageOwner;
use super::pages::{Chain, Check, DataFile, Piece};

/// One checkpoint, fully read and checked.
pub struct Loaded {
    pub global: GlobalImage,
    pub node: NodeImage,
    pub tasks: Vec<LoadedTask>,
    /// The owner of every file of the checkpoint.
    pub owner: ImageOwner,
    /// Tasks that were zombies (they have no task or memory file).
    pub zombies: Vec<image::TaskEntry>,
    /// The memory files the tasks' pages are read from (this SN's and the
    /// earlier ones of the chain), open since they were checked: restored
    /// tasks read their pages from these very files (inherited), never by
    /// name.
    pub files: Vec<DataFile>,
    /// The CRC of every block of page data the tasks need, by (file, offset).
    pub checks: Vec<Check>,
    /// `--inherit-fd N:PATH` of restart (set by the caller).
    pub inherit_fds: Vec<(i32, String)>,
    /// `--ctty-fg`: the root's terminal (its fd 0) becomes its session's
    /// controlling terminal, with this process group (a PID of the tree,
    /// 0: none of it) in the foreground.
    pub ctty_fg: Option<i32>,
    /// `--fetch-fd`: page data is still coming in; ask before reading it
    /// (set by the caller).
    pub fetch: Option<super::fetch::Fetch>,
    /// `--gate-fd`: the caller lets the tree run (set by the caller).
    pub gate: Option<std::os::fd::OwnedFd>,
    /// How to make the image's stand-ins (set by the caller).
    pub stand_in_start: Option<StandInStart>,
}

/// One task of a loaded checkpoint.
pub struct LoadedTask {
    pub task: TaskImage,
    pub mm: MmImage,
    /// Where every saved page's data is, in address order.
    pub pieces: Vec<Piece>,
}

/// The node a checkpoint holds tasks of here (in this directory), when it
/// is only one.
pub(super) fn only_node(global: &GlobalImage, dir: &CheckedDir, names: &Names) -> Result<u32> {
    let nodes = image::nodes_here(global, dir, names);
    match nodes[..] {
        [n] => Ok(n),
        [] => Err(ChkptError::bad_image(
            dir.join(&names.global()),
            "its node mask is empty",
        )),
        _ => Err(ChkptError::Usage(format!(
            "SN {} holds tasks of nodes {nodes:?}: choose one with --node",
            names.sn
        ))),
    }
}

/// Every file of a checkpoint has the owner of its global file.
fn same_owner(f: &OpenedFile, uid: u32) -> Result<()> {
    if f.uid != uid {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {} but the checkpoint's global file to uid {uid}: refusing a mixed image",
            f.path.display(),
            f.uid
        )));
    }
    Ok(())
}

/// When the page data of a checkpoint is compared with its CRCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// Every block, before anything is started.
    First,
    /// Every block, as it is loaded (`restart --lazy --check-as-loaded`:
    /// the page server does it).
    AsLoaded,
    /// Eager restore: the blocks of private anonymous memory as restart
    /// copies them into the tasks ([`fill`](super::fill)), before any task
    /// runs; every other block before anything is started.
    AsCopied,
}

/// Read every file of the checkpoint and check it (magic, version, CRC,
/// lengths, that page runs lie inside the data, referenced files exist,
/// one owner for every file, and credentials that owner has).
pub fn load(dir: &Path, sn: u32, node: Option<u32>) -> Result<Loaded> {
    load_checked(dir, sn, node, PageCheck::First)
}

/// The application directory `dir`, its global file of SN `sn` and the
/// uid that owns it: the directory's owner, or root, must own the image
/// files too.
pub(super) fn open_global(
    dir: &Path,
    sn: u32,
) -> Result<(CheckedDir, Decoded<GlobalImage>, OpenedFile)> {
    let dir = CheckedDir::open(dir)?;
    let names = Names { sn };
    if !dir.contains(&names.global()) {
        return Err(ChkptError::NoSuchCheckpoint {
            dir: dir.path().to_path_buf(),
            sn,
        });
    }
    let (g, gfile) = image::read_in::<GlobalImage>(&dir, &names.global(), FileKind::Global)?;
    let dir_uid = dir.stat()?.st_uid;
    if dir_uid != gfile.uid && dir_uid != 0 {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {dir_uid} but its images to uid {}: refusing it",
            dir.path().display(),
            gfile.uid
        )));
    }
    Ok((dir, g, gfile))
}

/// [`load`], page data checked as `pages` says.
pub fn load_checked(dir: &Path, sn: u32, node: Option<u32>, pages: PageCheck) -> Result<Loaded> {
    let (dir, g, gfile) = open_global(dir, sn)?;
    let names = Names { sn };
    let global = g.meta;
    let owner_uid = gfile.uid;
    let owner = ImageOwner::of_uid(owner_uid)?;
    let node = match node {
        Some(n) => n,
        None => only_node(&global, &dir, &names)?,
    };
    let (n, nfile) = image::read_in::<NodeImage>(&dir, &names.node(node), FileKind::Node)?;
    same_owner(&nfile, owner_uid)?;
    let node = n.meta;
    if node.tasks.is_empty() {
        return Err(ChkptError::bad_image(nfile.path, "no task"));
    }
    owner.check_ipc(&node)?;
    let mut tasks = Vec::new();
    let mut chain = Chain::new(&dir, owner_uid);
    if node.tasks[0].zombie.is_some() {
        return Err(ChkptError::bad_image(
            nfile.path,
            "its root task is a zombie",
        ));
    }
    let zombies: Vec<_> = node
        .tasks
        .iter()
        .filter(|t| t.zombie.is_some())
        .cloned()
        .collect();
    for te in node.tasks.iter().filter(|t| t.zombie.is_none()) {
        let (t, tfile) = image::read_in::<TaskImage>(&dir, &names.task(te.pid), FileKind::Task)?;
        same_owner(&tfile, owner_uid)?;
        let (mm, file, data_off, version) = chain.open_mm(sn, te.pid)?;
        check_files(&chain.files[file].path, &mm)?;
        let task = t.meta;
        if task.pid <= 0
            || task.threads.iter().any(|t| t.tid <= 0)
            || task.threads.is_empty()
            || image::regs_from_bytes(&task.threads[0].regs).is_none()
        {
            return Err(ChkptError::bad_image(&tfile.path, "no usable registers"));
        }
        owner.check_task(&task)?;
        if task.attrs.parents_fd_table && !node.tasks.iter().any(|p| p.pid == task.ppid) {
            return Err(ChkptError::bad_image(
                &tfile.path,
                "it shares the fd table of a parent the image does not hold",
            ));
        }
        super::sockets::check(owner.uid, &task).map_err(|why| {
            ChkptError::Permission(format!(
                "task {}: {why}, but the image belongs to uid {}: refusing to restart it",
                task.pid, owner.uid
            ))
        })?;
        super::held_check::check(owner.uid, &task).map_err(|why| {
            ChkptError::Permission(format!("task {}: {why}: refusing to restart it", task.pid))
        })?;
        let pieces = chain.resolve(sn, te.pid, (&mm, file, data_off, version))?;
        tasks.push(LoadedTask { task, mm, pieces });
    }
    check_stand_ins(&node, &tasks).map_err(|why| ChkptError::bad_image(&nfile.path, why))?;
    // Page data too is checked before anything is started (but what
    // restart checks as it copies it, or the page server as it loads it).
    match pages {
        PageCheck::First => chain.verify(None)?,
        PageCheck::AsCopied => {
            let read: Vec<Piece> = tasks
                .iter()
                .flat_map(|t| super::fill::split(&t.task, &t.mm.vmas, &t.pieces).0)
                .collect();
            chain.verify(Some(&read))?
        }
        // (but for the pages children inherit: see restore::restart)
        PageCheck::AsLoaded => {}
    }
    let (files, checks) = chain.into_parts();
    Ok(Loaded {
        global,
        node,
        tasks,
        owner,
        zombies,
        files,
        checks,
        inherit_fds: Vec::new(),
        ctty_fg: None,
        fetch: None,
        gate: None,
        stand_in_start: None,
    })
}

/// Mapped files present.
fn check_files(path: &Path, mm: &MmImage) -> Result<()> {
    for v in &mm.vmas {
        if let VmaKind::File { path: f, .. } = &v.kind {
            if !Path::new(f).exists() {
                return Err(ChkptError::bad_image(
                    path,
                    format!("mapped file {f} is missing"),
                ));
            }
        }
    }
    Ok(())
}

/// What restart needs to make the stand-ins of an image (krgd gives it).
#[derive(Debug, Clone)]
pub struct StandInStart {
    /// `krg` (absolute).
    pub program: String,
    /// krgd's socket, which the stand-in connects to.
    pub socket: PathBuf,
    /// The token of each stand-in, by its PID.
    pub tokens: Vec<(i32, u64)>,
}

/// Refuse stand-ins an image (which its user may have edited) holds in
/// a way restart cannot make: each needs a live parent of the tree, a
/// PID of its own, a command line, and fds 0-2 among what restart makes.
pub fn check_stand_ins(node: &NodeImage, tasks: &[LoadedTask]) -> std::result::Result<(), String> {
    let task = |p: i32| node.tasks.iter().any(|t| t.pid == p && t.zombie.is_none());
    let opened = |n: u32| {
        tasks
            .iter()
            .any(|t| t.task.fds.iter().any(|f| f.kind.file() == Some(n)))
    };
    for (i, s) in node.stand_ins.iter().enumerate() {
        let taken = node.tasks.iter().any(|t| t.pid == s.pid)
            || node.stand_ins[..i].iter().any(|o| o.pid == s.pid);
        if s.pid <= 0 || taken {
            return Err(format!("stand-in {}: its PID is not its own", s.pid));
        }
        if !task(s.ppid) {
            return Err(format!(
                "stand-in {}: its parent {} is not a process of the tree",
                s.pid, s.ppid
            ));
        }
        // 0 is a group or session outside the tree's PID namespace (a
        // process under an init that never called setsid has session 0)
        if s.pgid < 0 || s.sid < 0 || s.argv.is_empty() {
            return Err(format!(
                "stand-in {}: a negative process group or session, or no command line",
                s.pid
            ));
        }
        for (k, f) in s.stdio.iter().enumerate() {
            let ok = (0..=2).contains(&f.fd)
                && !s.stdio[..k].iter().any(|o| o.fd == f.fd)
                && match &f.kind {
                    FdKind::InheritedStdio { .. } => true,
                    FdKind::Pipe { ino, .. } => node.pipes.iter().any(|p| p.ino == *ino),
                    // opened by path with the owner's rights
                    FdKind::Path { .. } => true,
                    k => k.file().is_some_and(opened),
                };
            if !ok {
                return Err(format!(
                    "stand-in {}: fd {} is not one restart makes",
                    s.pid, f.fd
                ));
            }
        }
    }
    Ok(())
}
