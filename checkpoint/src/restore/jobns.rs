//! A checkpoint of a tree that ran in a PID namespace of its own (a `krg
//! run` job): its global file maps every PID it records to the tree's
//! number in that namespace (`GlobalImage::pidns`). Such a tree cannot
//! come back in restart's namespace — its PIDs there (2, 3, …) are taken —
//! so krgd restores it as a job: a new namespace, a new init, and the map
//! given to [`super::pidns::translate`].
//!
//! The global file belongs to the job's user, who may have edited it: the
//! map is checked here before anything is started.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{ChkptError, Result};
use crate::store;

use super::owner::ImageOwner;

/// What restoring a job's checkpoint needs to know before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCheckpoint {
    /// (PID the image records, PID in the job's namespace) of every task
    /// and thread; empty when the tree ran in checkpoint's namespace.
    pub map: Vec<(i32, i32)>,
    /// The root's PID in the job's namespace (0 when `map` is empty).
    pub root: i32,
    /// The owner of the image files, and their primary group.
    pub uid: u32,
    pub gid: u32,
}

/// Read SN `sn` of application `app` under `root`: its PID namespace map,
/// checked, and its owner.
pub fn read(root: &Path, app: i32, sn: u32) -> Result<JobCheckpoint> {
    let (_, g, file) = super::load::open_global(&store::app_dir(root, app), sn)?;
    let owner = ImageOwner::of_uid(file.uid)?;
    let map = g.meta.pidns;
    let root_pid = if map.is_empty() {
        0
    } else {
        check_map(&map, app).map_err(|why| ChkptError::bad_image(&file.path, why))?
    };
    Ok(JobCheckpoint {
        map,
        root: root_pid,
        uid: owner.uid,
        gid: owner.gid,
    })
}

/// A map restart can use: every PID on each side once, no PID 1 (the
/// new namespace's init has it) and the root `app` in it. Returns the
/// root's number in the namespace.
fn check_map(map: &[(i32, i32)], app: i32) -> std::result::Result<i32, String> {
    let mut outer = HashSet::new();
    let mut inner = HashSet::new();
    for &(o, i) in map {
        if o <= 0 || i <= 1 {
            return Err(format!(
                "PID namespace map: {o}={i} (each PID must be positive, and 1 is the init's)"
            ));
        }
        if !outer.insert(o) || !inner.insert(i) {
            return Err(format!("PID namespace map: {o}={i} repeats a PID"));
        }
    }
    map.iter()
        .find(|&&(o, _)| o == app)
        .map(|&(_, i)| i)
        .ok_or_else(|| format!("PID namespace map: no entry for the root, {app}"))
}

#[cfg(test)]
mod tests {
    use super::check_map;

    #[test]
    fn a_map_an_owner_edited_is_refused() {
        assert_eq!(check_map(&[(500, 2), (501, 3)], 500), Ok(2));
        for bad in [
            vec![(500, 1)],
            vec![(500, 2), (501, 2)],
            vec![(500, 2), (500, 3)],
            vec![(500, 0)],
            vec![(-4, 2)],
            vec![(501, 2)],
        ] {
            assert!(check_map(&bad, 500).is_err(), "{bad:?}");
        }
    }
}
