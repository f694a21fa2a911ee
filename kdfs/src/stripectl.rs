//! What `kdfsctl stripe` does: show or set the striping of a path of a
//! kDFS mount, through the mount's `kdfs.stripe` attribute (so the kernel
//! and the mount check who may: root or the directory's owner, with write
//! permission on it).

use std::path::Path;

use krg_proto::kdfs::StripePolicy;

use crate::vattr::{self, check_on_kdfs, Wording};
use crate::KdfsError;

const NAME: &str = "kdfs.stripe";
const WORDS: Wording = Wording {
    owner: "the directory's owner",
    not_dir: "not a directory: a file's layout is given when it is made",
};

/// The striping of `path`: a directory's policy (`4M:4`), a file's layout
/// (`4M:3 on nodes 1,2,3`); `None` when it has none.
pub fn show(path: &Path) -> Result<Option<String>, KdfsError> {
    check_on_kdfs(path)?;
    match vattr::get(path, NAME)? {
        Ok(v) => Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned())),
        Err(e) => Err(vattr::refused(path, "read its striping", &e, &WORDS)),
    }
}

/// Set the policy of directory `path` (`None`: files made in it from now
/// on are not striped).
pub fn set(path: &Path, policy: Option<StripePolicy>) -> Result<(), KdfsError> {
    check_on_kdfs(path)?;
    let value = policy.map(|p| p.to_string());
    vattr::set(path, NAME, value.as_deref().map(str::as_bytes))?
        .map_err(|e| vattr::refused(path, "set its striping", &e, &WORDS))
}
