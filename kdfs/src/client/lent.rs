//! What the mount does in its node's store under a loan ([`super::loans`]):
//! create and unlink, answered on the FUSE thread; borrowing; giving a
//! loan back; and the way of a loan's file handles to krgd.

use krg_proto::kdfs::{
    inode_id, inode_node, Attr, FileKind, InodeId, KdfsRequest as Q, KdfsResponse as A, NewInode,
};

use super::loans::LENT_HANDLE;
use super::ops::{unexpected, Ops, Res};
use crate::acl::DEFAULT as ACL_DEFAULT;

/// A file made under a loan, opened: its attributes and the mount's handle.
pub type MadeHere = (Attr, u64);

/// What create(2) asks: regular file `name` in `dir`, with the mode in
/// `new` less `umask`, opened for writing or not.
pub struct NewFile<'a> {
    pub dir: InodeId,
    pub name: &'a [u8],
    pub new: &'a NewInode,
    pub umask: u32,
    pub write: bool,
}

impl Ops {
    /// Whether this mount may use (or ask for) a loan of `dir` now.
    fn may_borrow(&self, dir: InodeId) -> bool {
        inode_node(dir) == self.local
            && self.local_store.is_sole_mount()
            && !self.local_store.is_mirrored()
            && self.cache.loans.usable()
    }

    /// Whether `f` may be made here, under a loan (asked for or held).
    fn may_make_here(&self, f: &NewFile) -> bool {
        f.new.kind == FileKind::File && self.may_borrow(f.dir)
    }

    /// create(2) of `f` under a loan of its directory, made in the store
    /// here (no krgd): the file, opened. `None`: not lent (see
    /// [`Ops::create_borrowing`]), or a create krgd must make (the
    /// directory has a default ACL).
    pub fn create_here(&self, f: &NewFile) -> Option<Res<MadeHere>> {
        if !self.may_make_here(f) {
            return None;
        }
        let loans = &self.cache.loans;
        let mut t = loans.lock();
        let loan = t.lent.get_mut(&f.dir)?;
        let new = self.masked_here(f.dir, f.new, f.umask)?;
        let ino = loan.number()?;
        let attr = match self.local_store.create_lent(f.dir, f.name, &new, ino) {
            Ok(attr) => attr,
            Err(e) => return Some(Err(e)),
        };
        let fh = loans.new_handle(&mut t, ino, f.write);
        Some(Ok((attr, fh)))
    }

    /// `new` with its mode as a create in `dir` gives it: the umask
    /// applied, as `Ops::inherit` does when `dir` has no default ACL.
    /// `None`: it has one (krgd makes the file, then its ACL is set).
    fn masked_here(&self, dir: InodeId, new: &NewInode, umask: u32) -> Option<NewInode> {
        let get = Q::GetXattr {
            ino: dir,
            name: ACL_DEFAULT.to_vec(),
        };
        match self.local_store.answer(self.local, get) {
            Ok(Err(libc::ENODATA)) | Ok(Err(libc::EOPNOTSUPP)) => {
                let mut new = new.clone();
                new.perm &= !(umask as u16);
                Some(new)
            }
            _ => None,
        }
    }

    /// [`Ops::create_here`], asking krgd to lend `dir` first (or for more
    /// inode numbers) when it is not lent (not refused lately).
    pub async fn create_borrowing(&self, f: &NewFile<'_>) -> Option<Res<MadeHere>> {
        let dir = f.dir;
        if !self.may_make_here(f) || !self.cache.loans.may_ask(dir) {
            return None;
        }
        match self.call(self.local, Q::Lend { dir }).await {
            Ok(A::Lent { first, count }) => {
                tracing::debug!(dir = %format!("{dir:x}"), "kdfs: directory lent to this mount");
                self.cache
                    .loans
                    .lent(dir, inode_id(self.local, first), count);
            }
            _ => {
                self.cache.loans.refused(dir);
                return None;
            }
        }
        self.create_here(f)
    }

    /// unlink(2) of `name` in `dir` under a loan, in the store here: when
    /// it names a regular file made under the loan that this mount does not
    /// hold open and that has no other name. `None`: through krgd.
    pub fn unlink_here(&self, dir: InodeId, name: &[u8]) -> Option<Res<()>> {
        if !self.may_borrow(dir) {
            return None;
        }
        let t = self.cache.loans.lock();
        let loan = t.lent.get(&dir)?;
        let lookup = Q::Lookup {
            dir,
            name: name.to_vec(),
        };
        let ino = match self.local_store.answer(self.local, lookup) {
            Ok(Ok(A::Entry {
                ino,
                kind: FileKind::File,
                ..
            })) => ino,
            Ok(Err(e)) => return Some(Err(e)),
            _ => return None,
        };
        if !loan.made(ino) || self.local_store.is_open(ino) {
            return None;
        }
        match self.local_store.unlink_lent(dir, name, ino) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Before `name` in `dir` is unlinked through krgd: krgd hears of this
    /// mount's handles of the file it names (made under a loan, still
    /// open), so that it keeps the file while they are.
    pub async fn make_handles_known(&self, dir: InodeId, name: &[u8]) {
        if inode_node(dir) != self.local {
            return;
        }
        let lookup = Q::Lookup {
            dir,
            name: name.to_vec(),
        };
        let Ok(Ok(A::Entry { ino, .. })) = self.local_store.answer(self.local, lookup) else {
            return;
        };
        let unknown = self.cache.loans.lock().unknown_handles(|i| i == ino);
        self.make_all_known(unknown).await;
    }

    /// Handles of files made under loans, which krgd hears of now (the
    /// loans were recalled or given up).
    pub async fn make_all_known(&self, handles: Vec<(InodeId, u64, bool)>) {
        for (ino, fh, write) in handles {
            if let Err(e) = self.make_known(ino, fh, write).await {
                tracing::warn!(ino = %format!("{ino:x}"), errno = e,
                    "kdfs: krgd did not hear of a handle of a file made in a lent directory");
            }
        }
    }

    /// Give every loan back (the store is being converted): krgd hears of
    /// the handles of the files made under them.
    pub async fn give_back_all(&self) {
        let handles: Vec<_> = self
            .cache
            .loans
            .lent_dirs()
            .into_iter()
            .flat_map(|dir| self.cache.loans.take(dir))
            .collect();
        self.make_all_known(handles).await;
    }

    /// krgd opens `ino` for handle `fh` of this mount: krgd's handle.
    async fn make_known(&self, ino: InodeId, fh: u64, write: bool) -> Res<u64> {
        match self.send(self.local, 0, Q::Open { ino, write }).await? {
            A::Handle(k) => {
                self.cache.loans.known(ino, fh, k);
                Ok(k)
            }
            other => unexpected("open", other),
        }
    }

    /// `q` as krgd must see it: a handle of a file made under a loan is
    /// replaced by krgd's (krgd hears of it first if it has not yet).
    pub(super) async fn with_krgd_handle(&self, q: Q) -> Res<Q> {
        let Some((ino, fh)) = crate::mirror::file_handle(&q) else {
            return Ok(q);
        };
        if fh & LENT_HANDLE == 0 {
            return Ok(q);
        }
        let (known, write) = self.cache.loans.krgd_handle(ino, fh).ok_or(libc::EBADF)?;
        let k = match known {
            Some(k) => k,
            None => self.make_known(ino, fh, write).await?,
        };
        Ok(crate::mirror::map_handle(q, |_| k))
    }

    /// Handle `fh` of `ino` closed: the handle krgd must release (`None`:
    /// krgd never heard of it).
    pub(super) fn krgd_release(&self, ino: InodeId, fh: u64) -> Option<u64> {
        if fh & LENT_HANDLE == 0 {
            return Some(fh);
        }
        self.cache.loans.released(ino, fh)
    }
}

/// Make the handles of recalled loans' files known to krgd, as the watcher
/// hands them over ([`super::loans::Loans::recall`]), while the mount lives.
pub async fn make_recalled_known(
    ops: std::sync::Weak<Ops>,
    mut recalled: tokio::sync::mpsc::UnboundedReceiver<super::loans::Recalled>,
) {
    while let Some((handles, done)) = recalled.recv().await {
        let Some(ops) = ops.upgrade() else { return };
        ops.make_all_known(handles).await;
        let _ = done.send(());
    }
}
