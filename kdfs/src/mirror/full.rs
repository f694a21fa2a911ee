//! A full copy of a store to its mirror, step by step: the owner's krgd
//! runs each step (and sends what it gives) between the changes it mirrors
//! as they happen, so that nothing stops while a large store is copied,
//! and a change to something already copied reaches the mirror after it.

use krg_proto::kdfs::{FileKind, InodeId, MirrorChange, MirrorInventory};

use super::place::{self, Keeper};
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
    Data { local: u64, offset: u64, len: u32 },
    /// A regular file's attributes again, after its data (writing the data
    /// moved the mirror's data time).
    Attrs(u64),
    /// Something the mirror holds and the store does not (gone meanwhile
    /// is checked at this step).
    Drop(u64),
    /// This node's copy of another node's striped file: its length; its
    /// data follows unless the mirror's has the same length and data time.
    Stripe(InodeId),
    /// Bytes of such a copy (its holes are not sent).
    StripeData { ino: InodeId, offset: u64, len: u32 },
    /// Its data time again, after its data.
    StripeAttrs(InodeId),
}

impl CopyStep {
    /// Whether this step looks at one object (or copy of a striped file):
    /// what a copy's progress counts.
    pub fn is_object(&self) -> bool {
        matches!(
            self,
            CopyStep::Object(_) | CopyStep::Drop(_) | CopyStep::Stripe(_)
        )
    }
}

/// The steps copying `store` to `keeper` (see [`super::place`]), which
/// holds `have`: what it keeps copied, the rest dropped — but, when
/// `store` is itself what `source` keeps of a store (a partial copy
/// handing it back), what it would not keep: it was never here.
pub fn plan(
    store: &Store,
    have: &MirrorInventory,
    keeper: Keeper,
    source: Keeper,
) -> Res<Vec<CopyStep>> {
    let mut mine = store.object_locals()?;
    mine.retain(|l| place::copies_object(store, keeper, *l));
    mine.sort_unstable();
    let mut steps = vec![CopyStep::Meta];
    steps.extend(mine.iter().map(|l| CopyStep::Object(*l)));
    for h in &have.objects {
        let count = h.replicas.unwrap_or(store.replicas());
        if mine.binary_search(&h.local).is_err() && place::keeps(source, count) {
            steps.push(CopyStep::Drop(h.local));
        }
    }
    let mut stripes = store.stripe_copies()?;
    if !place::keeps(keeper, store.replicas()) {
        stripes.clear();
    }
    stripes.sort_unstable();
    steps.extend(stripes.iter().map(|i| CopyStep::Stripe(*i)));
    let source_has_stripes = place::keeps(source, store.replicas());
    for (ino, _) in &have.stripes {
        if stripes.binary_search(ino).is_err() && source_has_stripes {
            // (gone meanwhile is checked at the step, as for objects)
            steps.push(CopyStep::StripeAttrs(*ino));
        }
    }
    Ok(steps)
}

/// Run one step for `keeper`: what to send, and the steps it
/// adds (a file's data). What the mirror no longer keeps (its count
/// changed, or it was planned as a drop) is dropped.
pub fn step(
    store: &Store,
    s: &CopyStep,
    have: &MirrorInventory,
    keeper: Keeper,
) -> Res<(Vec<MirrorChange>, Vec<CopyStep>)> {
    if !copies_step(store, keeper, s) {
        return Ok((dropped(s), Vec::new()));
    }
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
            let same = have.objects.iter().any(|h| {
                h.local == local
                    && h.kind == state.kind
                    && h.size == state.size
                    && h.mtime == state.mtime
            });
            let mut state = state;
            if state.kind == FileKind::File && !same && state.size > 0 {
                // Its holes are not sent: the mirror's copy is as sparse
                // (a striped file's object holds only the owner's units).
                // (gone meanwhile: its own change says so)
                let extents = store.object_extents(local).unwrap_or_default();
                more.extend(pieces(extents).map(|(offset, len)| CopyStep::Data {
                    local,
                    offset,
                    len,
                }));
                more.push(CopyStep::Attrs(local));
                // Emptied first, its size and data time set at `Attrs`:
                // a copy cut short before (a session started over) leaves
                // a file that differs, which the next copy fills again —
                // with the owner's size and time at once, it would be
                // taken for current without its data.
                state.size = 0;
            }
            changes.push(MirrorChange::Object {
                local,
                state: Some(state),
            });
            Ok((changes, more))
        }
        CopyStep::Data { local, offset, len } => {
            let data = match store.object_data(local, offset, len) {
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
        CopyStep::Stripe(ino) => stripe_step(store, ino, have),
        CopyStep::StripeData { ino, offset, len } => {
            // (gone meanwhile: its own change says so)
            let data = store.stripe_copy_data(ino, offset, len).unwrap_or_default();
            if data.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            let data = krg_proto::kdfs::Bytes(data.into());
            Ok((
                vec![MirrorChange::StripeData { ino, offset, data }],
                Vec::new(),
            ))
        }
        CopyStep::StripeAttrs(ino) => Ok((vec![store.stripe_change(ino)?], Vec::new())),
    }
}

/// Whether a full copy to `keeper` runs `step` (a step on
/// an object it does not keep becomes a drop: see `full::plan`).
fn copies_step(store: &Store, keeper: Keeper, step: &CopyStep) -> bool {
    match step {
        CopyStep::Meta => true,
        CopyStep::Stripe(_) | CopyStep::StripeData { .. } | CopyStep::StripeAttrs(_) => {
            place::keeps(keeper, store.replicas())
        }
        CopyStep::Object(l)
        | CopyStep::Data { local: l, .. }
        | CopyStep::Attrs(l)
        | CopyStep::Drop(l) => place::copies_object(store, keeper, *l),
    }
}

/// What the mirror drops for a step on something it does not keep.
fn dropped(s: &CopyStep) -> Vec<MirrorChange> {
    match *s {
        CopyStep::Object(local) | CopyStep::Attrs(local) | CopyStep::Drop(local) => {
            vec![MirrorChange::Object { local, state: None }]
        }
        CopyStep::Stripe(ino) | CopyStep::StripeAttrs(ino) => {
            vec![MirrorChange::StripeCopy { ino, state: None }]
        }
        CopyStep::Meta | CopyStep::Data { .. } | CopyStep::StripeData { .. } => Vec::new(),
    }
}

/// A copy of a striped file: its length now, and its data unless the
/// mirror's is the same.
fn stripe_step(
    store: &Store,
    ino: InodeId,
    have: &MirrorInventory,
) -> Res<(Vec<MirrorChange>, Vec<CopyStep>)> {
    let change = store.stripe_change(ino)?;
    let MirrorChange::StripeCopy {
        state: Some(state), ..
    } = change
    else {
        return Ok((vec![change], Vec::new()));
    };
    if have.stripes.contains(&(ino, state)) {
        return Ok((Vec::new(), Vec::new()));
    }
    let extents = store.stripe_extents(ino).unwrap_or_default();
    let mut more: Vec<CopyStep> = pieces(extents)
        .map(|(offset, len)| CopyStep::StripeData { ino, offset, len })
        .collect();
    more.push(CopyStep::StripeAttrs(ino));
    Ok((vec![change], more))
}

/// Data extents cut in pieces of [`PIECE`] bytes at most: (offset, length).
fn pieces(extents: Vec<(u64, u64)>) -> impl Iterator<Item = (u64, u32)> {
    extents.into_iter().flat_map(|(start, end)| {
        (start..end)
            .step_by(PIECE as usize)
            .map(move |offset| (offset, (end - offset).min(u64::from(PIECE)) as u32))
    })
}
