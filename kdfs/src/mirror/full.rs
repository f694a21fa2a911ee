//! A full copy of a store to its mirror, step by step: the owner's krgd
//! runs each step (and sends what it gives) between the changes it mirrors
//! as they happen, so that nothing stops while a large store is copied,
//! and a change to something already copied reaches the mirror after it.

use krg_proto::kdfs::{FileKind, MirrorChange, MirroredObject};

use crate::store::error::Res;
use crate::store::Store;

/// How much of a regular file one step copies.
pub const PIECE: u32 = 4 << 20;

/// One step of a full copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStep {
    /// The store's meta-files.
    Meta,
    /// An object as it is at this step (and, for a directory, all its
    /// entries); a regular file's data follows unless the mirror's copy
    /// has the same size and data time.
    Object(u64),
    /// Bytes of a regular file.
    Data { local: u64, offset: u64 },
    /// A regular file's attributes again, after its data (writing the data
    /// moved the mirror's data time).
    Attrs(u64),
    /// Something the mirror holds and the store does not (gone meanwhile
    /// is checked at this step).
    Drop(u64),
}

/// The steps copying `store` over a mirror that holds `have`.
pub fn plan(store: &Store, have: &[MirroredObject]) -> Res<Vec<CopyStep>> {
    let mut mine = store.object_locals()?;
    mine.sort_unstable();
    let mut steps = vec![CopyStep::Meta];
    steps.extend(mine.iter().map(|l| CopyStep::Object(*l)));
    for h in have {
        if mine.binary_search(&h.local).is_err() {
            steps.push(CopyStep::Drop(h.local));
        }
    }
    Ok(steps)
}

/// Run one step: what to send, and the steps it adds (a file's data).
pub fn step(
    store: &Store,
    s: &CopyStep,
    have: &[MirroredObject],
) -> Res<(Vec<MirrorChange>, Vec<CopyStep>)> {
    match *s {
        CopyStep::Meta => Ok((store.meta_images()?, Vec::new())),
        CopyStep::Object(local) => {
            let Some(state) = store.object_state(local)? else {
                return Ok((
                    vec![MirrorChange::Object { local, state: None }],
                    Vec::new(),
                ));
            };
            let mut more = Vec::new();
            let mut changes = Vec::new();
            if state.kind == FileKind::Dir {
                // Made, filled, then its times set back (the entries
                // moved them).
                let entries = store.all_entries(local)?;
                let made = MirrorChange::Object {
                    local,
                    state: Some(state),
                };
                changes.push(made.clone());
                changes.push(MirrorChange::Entries {
                    local,
                    entries,
                    complete: true,
                });
                changes.push(made);
                return Ok((changes, more));
            }
            let same = have.iter().any(|h| {
                h.local == local
                    && h.kind == state.kind
                    && h.size == state.size
                    && h.mtime == state.mtime
            });
            if state.kind == FileKind::File && !same && state.size > 0 {
                let pieces = state.size.div_ceil(u64::from(PIECE));
                more.extend((0..pieces).map(|i| CopyStep::Data {
                    local,
                    offset: i * u64::from(PIECE),
                }));
                more.push(CopyStep::Attrs(local));
            }
            changes.push(MirrorChange::Object {
                local,
                state: Some(state),
            });
            Ok((changes, more))
        }
        CopyStep::Data { local, offset } => {
            let data = match store.object_data(local, offset, PIECE) {
                Ok(d) => d,
                // Gone or no longer a file: its own change said so.
                Err(_) => return Ok((Vec::new(), Vec::new())),
            };
            if data.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            let data = krg_proto::kdfs::Bytes(data.into());
            Ok((
                vec![MirrorChange::Data {
                    local,
                    offset,
                    data,
                }],
                Vec::new(),
            ))
        }
        CopyStep::Attrs(local) => {
            let state = store.object_state(local)?;
            Ok((vec![MirrorChange::Object { local, state }], Vec::new()))
        }
        CopyStep::Drop(local) => {
            let state = store.object_state(local)?;
            Ok((vec![MirrorChange::Object { local, state }], Vec::new()))
        }
    }
}
