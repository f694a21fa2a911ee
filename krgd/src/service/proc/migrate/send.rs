//! The origin's sending side: the dump into `<data_dir>/migrate/out/`
//! with the memory files shipped while the process runs ([`Early`]), then
//! the final file list and what changed, sent while it is stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use krg_proto::admin::{AdminError, ErrorKind};
use krg_proto::migrate::{ImageFile, Offer};
use krg_proto::proc::Credentials;
use krg_proto::NodeId;

use checkpoint::checked_dir::CheckedDir;

use super::{check, err, push as pushing};

/// The files of SN `sn` in `dir`, with their lengths.
pub(super) fn image_files(dir: &Path, sn: u32) -> std::io::Result<Vec<ImageFile>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours =
            name.ends_with(&format!("_v{sn}.bin")) || name == format!("description_v{sn}.txt");
        if ours && e.file_type()?.is_file() {
            out.push(ImageFile {
                name,
                len: e.metadata()?.len(),
            });
        }
    }
    // the global file last: a reader takes its presence as "complete"
    out.sort_by_key(|f| (f.name.starts_with("global_"), f.name.clone()));
    Ok(out)
}

/// What the dump left.
pub(super) struct Dumped {
    pub(super) app: i32,
    pub(super) sn: u32,
    pub(super) dir: PathBuf,
    pub(super) tasks: Vec<i32>,
    pub(super) frozen_at: Instant,
    pub(super) phases: Vec<checkpoint::timings::Phase>,
    /// What changed in the memory files sent early (see `DumpReport::delta`).
    pub(super) delta: HashMap<String, Vec<(u64, u64)>>,
    /// Where each memory file's page data is (see `DumpReport::page_data`).
    pub(super) page_data: HashMap<String, (u64, u64)>,
}

/// The memory files sent to the target while the process runs.
pub(super) struct Early {
    pub(super) handle: tokio::runtime::Handle,
    pub(super) sender: pushing::Sender,
    /// The offer, but its SN and files.
    pub(super) offer: Offer,
    /// Why sending failed, when it did.
    pub(super) error: Option<AdminError>,
    /// The memory files listed to the target so far, as last listed.
    pub(super) listed: Vec<ImageFile>,
    /// Sends handed over and not yet waited for (see [`Ship::flush`]).
    ///
    /// [`Ship::flush`]: checkpoint::dump::Ship::flush
    pub(super) sending: Vec<Sending>,
}

/// One spawned send; dropped unfinished (the dump failed), it stops.
pub(super) struct Sending(tokio::task::JoinHandle<Result<u64, AdminError>>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Merge `files` (name, length) into `listed`, what the target was
/// listed: whether it changed (a file new, or of a new length). A file
/// listed before stays listed (the target drops what a list leaves out;
/// the final list, after the dump, says which files the image has).
fn merge_listed<'a>(
    listed: &mut Vec<ImageFile>,
    files: impl Iterator<Item = (&'a str, u64)>,
) -> bool {
    let mut changed = false;
    for (name, len) in files {
        match listed.iter_mut().find(|l| l.name == name) {
            Some(l) if l.len == len => {}
            Some(l) => {
                l.len = len;
                changed = true;
            }
            None => {
                listed.push(ImageFile {
                    name: name.to_string(),
                    len,
                });
                changed = true;
            }
        }
    }
    changed
}

impl Early {
    fn failed(&mut self, e: AdminError) -> String {
        let msg = e.message.clone();
        self.error = Some(e);
        msg
    }
}

impl checkpoint::dump::Ship for Early {
    /// Lists the files to the target (the offer, first), then sends their
    /// ranges on a task of their own: the dump goes on meanwhile.
    fn staged(&mut self, sn: u32, files: &[checkpoint::dump::Staged]) -> Result<(), String> {
        let mut parts = Vec::new();
        for f in files {
            let file = f.file.try_clone().map_err(|e| format!("{}: {e}", f.name))?;
            parts.push(pushing::Part {
                name: f.name.clone(),
                file: Arc::new(file),
                ranges: f.ranges.clone(),
            });
        }
        let relist = merge_listed(
            &mut self.listed,
            files.iter().map(|f| (f.name.as_str(), f.len)),
        );
        let list = self.listed.clone();
        let Early {
            handle,
            sender,
            offer,
            ..
        } = self;
        let listed = handle.block_on(async {
            if !sender.offered {
                let mut o = offer.clone();
                o.sn = sn;
                o.files = list;
                sender.offer(o).await
            } else if relist {
                sender.files(offer.pids.clone(), list).await
            } else {
                Ok(())
            }
        });
        let sending = listed.and_then(|()| self.sender.sending(&parts));
        match sending {
            Ok(task) => {
                self.sending.push(Sending(self.handle.spawn(task)));
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        let pending = std::mem::take(&mut self.sending);
        let done = self.handle.block_on(async {
            let mut sent = 0;
            for mut s in pending {
                sent += (&mut s.0).await.map_err(|e| {
                    AdminError::new(ErrorKind::Internal, format!("sending the image: {e}"))
                })??;
            }
            Ok::<u64, AdminError>(sent)
        });
        match done {
            Ok(n) => {
                self.sender.bytes += n;
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }
}

/// Dump `pid` into `out`, leaving it stopped; its memory files go to the
/// target as they are copied. `stdio_files`: see
/// [`checkpoint::dump::DumpOptions::stdio_files`].
pub(super) fn dump(
    pid: i32,
    out: &Path,
    node: NodeId,
    in_job: bool,
    stdio_files: Vec<(u64, u64)>,
    early: &mut Early,
) -> Result<Dumped, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let opts = checkpoint::dump::DumpOptions {
        root: out.to_path_buf(),
        kill: false,
        stop: true,
        node: node.min(63),
        sysv_sem: Vec::new(),
        sysv_msg: Vec::new(),
        full: true,
        other_pidns: in_job,
        stdio_files,
        stand_ins: Vec::new(),
    };
    // post-copy sends no memory while the process runs: it goes after
    let ship: Option<&mut dyn checkpoint::dump::Ship> = if early.offer.postcopy {
        None
    } else {
        Some(early)
    };
    let r = checkpoint::dump::checkpoint_shipped(pid, &opts, &|_, _| {}, ship)
        .map_err(|e| e.to_string())?;
    Ok(Dumped {
        app: pid,
        sn: r.sn,
        dir: r.dir,
        tasks: r.tasks,
        frozen_at: r.frozen_at,
        phases: r.phases,
        delta: r.delta,
        page_data: r.page_data,
    })
}

/// Send the image: the offer (or, after an early one, the final file
/// list), then every file, or what changed in it since it was sent early
/// — with `postcopy`, but the memory files' page data (the target pulls
/// it once the process runs there). Returns the bytes sent in all.
pub(super) async fn push(
    sender: &mut pushing::Sender,
    rep: &Dumped,
    plan: &check::Plan,
    who: Credentials,
    postcopy: bool,
) -> Result<u64, AdminError> {
    let files = image_files(&rep.dir, rep.sn)
        .map_err(|e| err(ErrorKind::Internal, format!("reading the image: {e}")))?;
    let early = sender.offered;
    if early {
        sender.files(rep.tasks.clone(), files.clone()).await?;
    } else {
        let offer = Offer {
            xfer: sender.xfer,
            app: rep.app,
            sn: rep.sn,
            pids: rep.tasks.clone(),
            owner: plan.owner,
            creds: who,
            files: files.clone(),
            identities: plan.identities.clone(),
            postcopy,
        };
        sender.offer(offer).await?;
    }
    let dir = CheckedDir::open(&rep.dir).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
    let mut parts = Vec::new();
    for f in &files {
        let file =
            open_image_file(&dir, &f.name, plan.owner).map_err(|e| err(ErrorKind::Internal, e))?;
        let mut ranges = match rep.delta.get(&f.name) {
            Some(r) if early => r.clone(),
            _ => vec![(0, f.len)],
        };
        if let Some(&pages) = rep.page_data.get(&f.name).filter(|_| postcopy) {
            ranges = without(&ranges, pages);
        }
        parts.push(pushing::Part {
            name: f.name.clone(),
            file: Arc::new(file),
            ranges,
        });
    }
    sender.send(&parts).await?;
    Ok(sender.bytes)
}

/// A file of a dumped image, to send. The image's directory belongs to its
/// owner, who may have put anything there since the dump: only a regular
/// file of the owner's with one name is taken, never through a symbolic
/// link ([`CheckedDir::open_file`]: root would read whatever a link names,
/// and send it to be written where the owner can read it).
pub(super) fn open_image_file(
    dir: &CheckedDir,
    name: &str,
    owner: u32,
) -> Result<std::fs::File, String> {
    let f = dir.open_file(name).map_err(|e| e.to_string())?;
    if f.uid != owner {
        return Err(format!(
            "{} belongs to uid {} and the image to uid {owner}: the image was changed since the dump",
            f.path.display(),
            f.uid
        ));
    }
    Ok(f.file)
}

/// `ranges` less `[cut.0, cut.1)`.
fn without(ranges: &[(u64, u64)], cut: (u64, u64)) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in ranges {
        if s < cut.0 {
            out.push((s, e.min(cut.0)));
        }
        if e > cut.1 {
            out.push((s.max(cut.1), e));
        }
    }
    out.retain(|r| r.1 > r.0);
    out
}

#[cfg(test)]
mod tests {
    use super::{merge_listed, open_image_file, without, CheckedDir};

    /// The parts of a first round come one file at a time: the list the
    /// target gets grows, and keeps every file listed before.
    #[test]
    fn the_listed_files_grow_and_keep_what_was_listed() {
        let mut listed = Vec::new();
        let names = |l: &Vec<krg_proto::migrate::ImageFile>| -> Vec<(String, u64)> {
            l.iter().map(|f| (f.name.clone(), f.len)).collect()
        };
        assert!(merge_listed(&mut listed, [("a", 10)].into_iter()));
        // the same file again, same length: nothing to list again
        assert!(!merge_listed(&mut listed, [("a", 10)].into_iter()));
        assert!(merge_listed(&mut listed, [("b", 5)].into_iter()));
        assert_eq!(names(&listed), [("a".into(), 10), ("b".into(), 5)]);
        // a later round's slots make a file longer
        assert!(merge_listed(&mut listed, [("b", 5), ("a", 12)].into_iter()));
        assert_eq!(names(&listed), [("a".into(), 12), ("b".into(), 5)]);
    }

    #[test]
    fn an_image_file_is_taken_only_as_a_regular_file_of_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let dir = CheckedDir::open(d.path()).unwrap();
        std::fs::write(d.path().join("task_mm_1_v1.bin"), b"pages").unwrap();
        let me = std::fs::metadata(d.path()).unwrap().uid();
        assert!(open_image_file(&dir, "task_mm_1_v1.bin", me).is_ok());
        // a symbolic link put in its place, to a file root may read
        std::os::unix::fs::symlink("/etc/shadow", d.path().join("task_mm_2_v1.bin")).unwrap();
        assert!(open_image_file(&dir, "task_mm_2_v1.bin", me).is_err());
        // a file of another user
        let other = d.path().join("task_mm_3_v1.bin");
        std::fs::write(&other, b"x").unwrap();
        std::os::unix::fs::chown(&other, Some(4242), None).unwrap();
        assert!(open_image_file(&dir, "task_mm_3_v1.bin", 4243).is_err());
        assert!(open_image_file(&dir, "task_mm_3_v1.bin", 4242).is_ok());
        // a second name (a hard link)
        std::fs::hard_link(&other, d.path().join("linked")).unwrap();
        assert!(open_image_file(&dir, "task_mm_3_v1.bin", 4242).is_err());
    }

    #[test]
    fn a_range_is_cut_out() {
        let r = [(0, 10), (12, 20), (25, 40), (50, 60)];
        assert_eq!(without(&r, (5, 30)), vec![(0, 5), (30, 40), (50, 60)]);
        assert_eq!(without(&r, (0, 100)), vec![]);
        assert_eq!(without(&r, (40, 50)), r.to_vec());
        assert_eq!(without(&[(0, 100)], (10, 20)), vec![(0, 10), (20, 100)]);
    }
}
