//! Reading a checkpoint for restart: every file opened by descriptor,
//! decoded, checked, and its owner's rights applied, before anything runs.

use std::path::{Path, PathBuf};

use crate::checked_dir::{CheckedDir, OpenedFile};
use crate::error::{ChkptError, Result};
use crate::image::{
    self, FileKind, GlobalImage, MmImage, Names, NodeImage, TaskImage, VmaKind, PAGE,
};

use super::owner::ImageOwner;

/// One checkpoint, fully read and checked.
pub struct Loaded {
    pub global: GlobalImage,
    pub node: NodeImage,
    pub tasks: Vec<LoadedTask>,
    /// The owner of every file of the checkpoint.
    pub owner: ImageOwner,
}

/// One task of a loaded checkpoint.
pub struct LoadedTask {
    pub task: TaskImage,
    pub mm: MmImage,
    /// The memory image, open since it was checked: the restored task reads
    /// its pages from this very file (inherited as `mm_fd`), never by name.
    pub mm_file: std::fs::File,
    pub mm_path: PathBuf,
    /// Where page data starts in the memory image.
    pub data_off: u64,
}

/// The node a checkpoint holds tasks of, when it is only one.
fn only_node(global: &GlobalImage, dir: &CheckedDir, names: &Names) -> Result<u32> {
    let nodes: Vec<u32> = (0..64u32)
        .filter(|n| global.node_mask & (1u64 << n) != 0)
        .collect();
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

/// Read every file of the checkpoint and check it (magic, version, CRC,
/// lengths, that page runs lie inside the data, referenced files exist,
/// one owner for every file, and credentials that owner has).
pub fn load(dir: &Path, sn: u32, node: Option<u32>) -> Result<Loaded> {
    let dir = CheckedDir::open(dir)?;
    let names = Names { sn };
    if !dir.contains(&names.global()) {
        return Err(ChkptError::NoSuchCheckpoint {
            dir: dir.path().to_path_buf(),
            sn,
        });
    }
    let (g, gfile) = image::read_in::<GlobalImage>(&dir, &names.global(), FileKind::Global)?;
    let global = g.meta;
    let owner_uid = gfile.uid;
    let dir_uid = dir.stat()?.st_uid;
    if dir_uid != owner_uid && dir_uid != 0 {
        return Err(ChkptError::Permission(format!(
            "{} belongs to uid {dir_uid} but its images to uid {owner_uid}: refusing it",
            dir.path().display()
        )));
    }
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
    for te in &node.tasks {
        let (t, tfile) = image::read_in::<TaskImage>(&dir, &names.task(te.pid), FileKind::Task)?;
        same_owner(&tfile, owner_uid)?;
        let (d, mfile) = image::read_in::<MmImage>(&dir, &names.task_mm(te.pid), FileKind::Mm)?;
        same_owner(&mfile, owner_uid)?;
        check_mm(&mfile.path, &d)?;
        let task = t.meta;
        if task.pid <= 0
            || task.threads.iter().any(|t| t.tid <= 0)
            || task.threads.is_empty()
            || image::regs_from_bytes(&task.threads[0].regs).is_none()
        {
            return Err(ChkptError::bad_image(&tfile.path, "no usable registers"));
        }
        owner.check_task(&task)?;
        tasks.push(LoadedTask {
            task,
            mm: d.meta,
            mm_file: mfile.file,
            mm_path: mfile.path,
            data_off: d.data_off,
        });
    }
    Ok(Loaded {
        global,
        node,
        tasks,
        owner,
    })
}

/// Mappings page aligned, page runs inside the data and their mapping,
/// mapped files present.
fn check_mm(path: &Path, d: &image::Decoded<MmImage>) -> Result<()> {
    for v in &d.meta.vmas {
        if v.start >= v.end || v.start % PAGE != 0 || v.end % PAGE != 0 {
            return Err(ChkptError::bad_image(
                path,
                format!("bad mapping {:#x}-{:#x}", v.start, v.end),
            ));
        }
        for r in &v.runs {
            let len = r.pages.checked_mul(PAGE);
            let end = len.and_then(|l| r.data_off.checked_add(l));
            let vend = len.and_then(|l| r.addr.checked_add(l));
            if end.is_none_or(|e| e > d.data_len)
                || r.addr < v.start
                || vend.is_none_or(|e| e > v.end)
                || r.data_off % PAGE != 0
            {
                return Err(ChkptError::bad_image(
                    path,
                    "page run outside the data or its mapping",
                ));
            }
        }
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
