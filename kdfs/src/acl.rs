//! POSIX ACLs as the kernel hands them over (`system.posix_acl_access`,
//! `system.posix_acl_default`): a version word (2) and 8-byte entries
//! (tag, permissions, id; little-endian). The kernel enforces them (the
//! mount asks for FUSE_POSIX_ACL) but leaves to the file system what a
//! local one does itself: the mode an access ACL implies, an ACL that
//! follows a `chmod`, and a new inode inheriting its directory's default
//! ACL — the rules of the kernel's `posix_acl_equiv_mode`,
//! `posix_acl_chmod` and `posix_acl_create`, here on the bytes.
//!
//! Every value comes from a user: anything malformed is `None`.

/// The attribute that holds an inode's access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// The attribute that holds a directory's default ACL.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const VERSION: u32 = 2;

/// One entry: tag, permission bits (rwx), id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

fn parse(value: &[u8]) -> Option<Vec<Entry>> {
    let (head, body) = value.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != VERSION || body.len() % 8 != 0 {
        return None;
    }
    let entries: Vec<Entry> = body
        .chunks_exact(8)
        .map(|e| Entry {
            tag: u16::from_le_bytes([e[0], e[1]]),
            perm: u16::from_le_bytes([e[2], e[3]]) & 7,
            id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        })
        .collect();
    let count = |t| entries.iter().filter(|e| e.tag == t).count();
    let known = entries
        .iter()
        .all(|e| [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag));
    let bases = [USER_OBJ, GROUP_OBJ, OTHER].iter().all(|&t| count(t) == 1);
    (known && bases && count(MASK) <= 1).then_some(entries)
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    for e in entries {
        out.extend(e.tag.to_le_bytes());
        out.extend(e.perm.to_le_bytes());
        out.extend(e.id.to_le_bytes());
    }
    out
}

/// The permission bits an access ACL gives (owner, mask or group, other),
/// and whether the mode says it all (only the three base entries); `None`
/// if it is not a well-formed ACL.
pub fn equiv_mode(value: &[u8]) -> Option<(u32, bool)> {
    let entries = parse(value)?;
    let perm = |t| {
        entries
            .iter()
            .find(|e| e.tag == t)
            .map(|e| u32::from(e.perm))
    };
    let minimal = entries.len() == 3;
    Some((
        perm(USER_OBJ)? << 6 | perm(MASK).or(perm(GROUP_OBJ))? << 3 | perm(OTHER)?,
        minimal,
    ))
}

/// The access ACL `value` after a `chmod` to `mode`: the owner, mask (or
/// group, without a mask) and other entries take the mode's bits; `None`
/// if it is not a well-formed ACL.
pub fn chmod(value: &[u8], mode: u32) -> Option<Vec<u8>> {
    let mut entries = parse(value)?;
    let has_mask = entries.iter().any(|e| e.tag == MASK);
    let bits = |shift: u32| ((mode >> shift) & 7) as u16;
    for e in &mut entries {
        match e.tag {
            USER_OBJ => e.perm = bits(6),
            MASK => e.perm = bits(3),
            GROUP_OBJ if !has_mask => e.perm = bits(3),
            OTHER => e.perm = bits(0),
            _ => {}
        }
    }
    Some(encode(&entries))
}

/// A new inode of mode `mode` (its permission bits as asked, before any
/// umask) in a directory whose default ACL is `default`: its access ACL
/// (`None` when its mode says it all) and its mode, as
/// `posix_acl_create` makes them. `None` if `default` is malformed.
pub fn inherit(default: &[u8], mode: u32) -> Option<(Option<Vec<u8>>, u32)> {
    let mut entries = parse(default)?;
    let mut bits = mode & 0o777;
    let mut extended = false;
    for e in &mut entries {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((bits >> 6) & 7) as u16;
                bits &= u32::from(e.perm) << 6 | !0o700;
            }
            OTHER => {
                e.perm &= (bits & 7) as u16;
                bits &= u32::from(e.perm) | !0o007;
            }
            USER | GROUP | MASK => extended = true,
            _ => {}
        }
    }
    let group = match entries.iter().position(|e| e.tag == MASK) {
        Some(i) => i,
        None => entries.iter().position(|e| e.tag == GROUP_OBJ)?,
    };
    entries[group].perm &= ((bits >> 3) & 7) as u16;
    bits &= u32::from(entries[group].perm) << 3 | !0o070;
    let mode = (mode & !0o777) | bits;
    Some((extended.then(|| encode(&entries)), mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let e: Vec<Entry> = entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect();
        encode(&e)
    }

    const ANY: u32 = u32::MAX;

    #[test]
    fn an_access_acl_gives_the_mode_with_the_mask_as_group() {
        let full = acl(&[
            (USER_OBJ, 6, ANY),
            (USER, 7, 1000),
            (GROUP_OBJ, 4, ANY),
            (MASK, 5, ANY),
            (OTHER, 0, ANY),
        ]);
        assert_eq!(equiv_mode(&full), Some((0o650, false)));
        let base = acl(&[(USER_OBJ, 6, ANY), (GROUP_OBJ, 4, ANY), (OTHER, 4, ANY)]);
        assert_eq!(equiv_mode(&base), Some((0o644, true)));
        assert_eq!(equiv_mode(&full[..full.len() - 1]), None);
        assert_eq!(equiv_mode(&[1, 0, 0, 0]), None);
        assert_eq!(equiv_mode(&2u32.to_le_bytes()), None, "no owner entry");
        let twice = acl(&[
            (USER_OBJ, 6, ANY),
            (USER_OBJ, 7, ANY),
            (GROUP_OBJ, 4, ANY),
            (OTHER, 4, ANY),
        ]);
        assert_eq!(equiv_mode(&twice), None, "two owner entries");
        let odd = acl(&[
            (USER_OBJ, 6, ANY),
            (0x40, 7, 1),
            (GROUP_OBJ, 4, ANY),
            (OTHER, 4, ANY),
        ]);
        assert_eq!(equiv_mode(&odd), None, "an unknown tag");
    }

    #[test]
    fn chmod_sets_the_owner_mask_and_other_entries() {
        let before = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, ANY),
            (MASK, 7, ANY),
            (OTHER, 5, ANY),
        ]);
        let after = chmod(&before, 0o600).unwrap();
        assert_eq!(
            after,
            acl(&[
                (USER_OBJ, 6, ANY),
                (USER, 7, 1000),
                (GROUP_OBJ, 5, ANY),
                (MASK, 0, ANY),
                (OTHER, 0, ANY),
            ]),
            "chmod 600: the named user's rwx is masked off"
        );
        // without a mask, the group entry takes the group bits
        let base = acl(&[(USER_OBJ, 6, ANY), (GROUP_OBJ, 4, ANY), (OTHER, 4, ANY)]);
        assert_eq!(
            chmod(&base, 0o750).unwrap(),
            acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 5, ANY), (OTHER, 0, ANY)])
        );
        // setting the mode an ACL implies changes nothing
        assert_eq!(chmod(&before, 0o775).unwrap(), before);
    }

    #[test]
    fn a_new_inode_inherits_the_default_acl_masked_by_its_mode() {
        let default = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, ANY),
            (MASK, 7, ANY),
            (OTHER, 5, ANY),
        ]);
        // open(O_CREAT, 0666): no umask; x bits off as the mode asks
        let (access, mode) = inherit(&default, 0o666).unwrap();
        assert_eq!(mode, 0o664, "other: what the default ACL gives them");
        assert_eq!(
            access.unwrap(),
            acl(&[
                (USER_OBJ, 6, ANY),
                (USER, 7, 1000),
                (GROUP_OBJ, 5, ANY),
                (MASK, 6, ANY),
                (OTHER, 4, ANY),
            ])
        );
        // a default ACL of the base entries only gives the mode alone
        let base = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 0, ANY), (OTHER, 0, ANY)]);
        assert_eq!(inherit(&base, 0o777).unwrap(), (None, 0o700));
        // set-id and sticky bits are the caller's
        assert_eq!(inherit(&base, 0o2777).unwrap().1, 0o2700);
        assert_eq!(inherit(&[2, 0, 0, 0, 1], 0o644), None);
    }
}
