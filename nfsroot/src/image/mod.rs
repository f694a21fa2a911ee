//! The image store: a directory holding golden images (`base`), their
//! read-only versions (`base@1`, `base@2`, ...) and per-node writable clones
//! (`node1`). Each entry is a directory `<root>/<name>`; what it is, where it
//! came from and how it was made is kept in `<root>/.nfsroot/<name>.toml`.
//! Overlay clones keep their upper and work directories in
//! `<root>/.overlay/<name>/`.

mod build;
mod mechanism;
pub mod netboot;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use build::{apt_mirror, BuildOptions, BuildSource, KRG_BINARIES};
pub use mechanism::{available as available_mechanisms, Mechanism};

use crate::atomic::write_atomic;
use crate::desc::valid_image_name;
use crate::error::{NfsrootError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A writable golden image, made by `image build`.
    Image,
    /// A read-only version of an image, made by `image snapshot`.
    Version,
    /// A writable clone of a version or image, made by `image clone`.
    Clone,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Image => "image",
            Kind::Version => "version",
            Kind::Clone => "clone",
        })
    }
}

/// What `<root>/.nfsroot/<name>.toml` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Format version of this record.
    pub format: u32,
    pub kind: Kind,
    /// The entry it was made from (None for a built image).
    pub origin: Option<String>,
    pub mechanism: Option<Mechanism>,
    /// Seconds since the epoch.
    pub created: u64,
    /// For a version: whether the file system enforces read-only (btrfs
    /// read-only snapshot or immutable flags).
    #[serde(default)]
    pub enforced_read_only: bool,
}

/// One line of `image ls`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub meta: Meta,
    /// Overlay clones: whether the overlay is mounted now.
    pub mounted: bool,
}

/// The metadata of `name` in the store at `root`, without creating anything
/// (for `render --diff`, which must not touch the disk). None if absent or unreadable.
pub fn read_meta(root: &Path, name: &str) -> Option<Meta> {
    let text = fs::read_to_string(root.join(".nfsroot").join(format!("{name}.toml"))).ok()?;
    toml::from_str(&text).ok()
}

/// Is `name` a clone that can be written now? Err says why not (not a
/// clone, or an overlay clone whose overlay is not mounted — writing into its
/// empty mount point would be hidden once it is mounted).
pub fn writable_clone(root: &Path, name: &str) -> std::result::Result<(), String> {
    match read_meta(root, name) {
        Some(m) if m.kind == Kind::Clone => {
            if m.mechanism == Some(Mechanism::Overlay)
                && !mechanism::is_mountpoint(&root.join(name))
            {
                Err(format!(
                    "overlay clone {name} is not mounted (nfsroot image mount {name})"
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(format!(
            "{} exists but is not an nfsroot clone",
            root.join(name).display()
        )),
    }
}

pub struct Store {
    root: PathBuf,
}

/// Result of a snapshot or clone: the new name and how it was made.
#[derive(Debug, Clone)]
pub struct Made {
    pub name: String,
    pub mechanism: Mechanism,
    /// A line for the server's /etc/fstab (overlay clones only).
    pub fstab_line: Option<String>,
    pub enforced_read_only: bool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        if !root.is_absolute() {
            return Err(NfsrootError::Image(format!(
                "image root {} must be an absolute path",
                root.display()
            )));
        }
        fs::create_dir_all(root.join(".nfsroot"))
            .map_err(|e| NfsrootError::io(format!("creating {}/.nfsroot", root.display()), e))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.root.join(".nfsroot").join(format!("{name}.toml"))
    }

    fn overlay_dir(&self, name: &str) -> PathBuf {
        self.root.join(".overlay").join(name)
    }

    pub fn meta(&self, name: &str) -> Result<Meta> {
        let p = self.meta_path(name);
        let text = fs::read_to_string(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                NfsrootError::Image(format!("no image named {name} in {}", self.root.display()))
            }
            _ => NfsrootError::io(format!("reading {}", p.display()), e),
        })?;
        toml::from_str(&text).map_err(|e| NfsrootError::Parse {
            path: p,
            message: e.message().to_string(),
        })
    }

    fn write_meta(&self, name: &str, meta: &Meta) -> Result<()> {
        let text = toml::to_string(meta)
            .map_err(|e| NfsrootError::Image(format!("encoding metadata of {name}: {e}")))?;
        write_atomic(&self.meta_path(name), text.as_bytes(), 0o644)
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        if !valid_image_name(name) || name.contains('@') {
            return Err(NfsrootError::Image(format!(
                "{name:?} is not a valid name (letters, digits, '-', '_', '.'; no '@')"
            )));
        }
        if self.path(name).exists() || self.meta_path(name).exists() {
            return Err(NfsrootError::Image(format!(
                "{name} already exists in {}",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// Every entry, sorted by name.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let dir = self.root.join(".nfsroot");
        let rd = fs::read_dir(&dir)
            .map_err(|e| NfsrootError::io(format!("listing {}", dir.display()), e))?;
        let mut v = Vec::new();
        for e in rd.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            let Some(name) = fname.strip_suffix(".toml") else {
                continue;
            };
            let meta = self.meta(name)?;
            let mounted = meta.mechanism == Some(Mechanism::Overlay)
                && mechanism::is_mountpoint(&self.path(name));
            v.push(Entry {
                name: name.to_string(),
                meta,
                mounted,
            });
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Register a tree that `build` has filled at `<root>/<name>`.
    fn register_image(&self, name: &str) -> Result<()> {
        let meta = Meta {
            format: 1,
            kind: Kind::Image,
            origin: None,
            mechanism: None,
            created: now(),
            enforced_read_only: false,
        };
        self.write_meta(name, &meta)
    }

    /// The next read-only version of image `name`: `name@N`.
    pub fn snapshot(&self, name: &str) -> Result<Made> {
        let meta = self.meta(name)?;
        if meta.kind == Kind::Version {
            return Err(NfsrootError::Image(format!(
                "{name} is already a read-only version; snapshot the image it came from"
            )));
        }
        let next = self
            .list()?
            .iter()
            .filter_map(|e| {
                e.name
                    .strip_prefix(name)
                    .and_then(|r| r.strip_prefix('@'))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .max()
            .unwrap_or(0)
            + 1;
        let version = format!("{name}@{next}");
        let src = self.path(name);
        let dst = self.path(&version);
        let tmp = self.root.join(format!(".{version}.partial"));
        let (mechanism, enforced) = if mechanism::is_subvolume(&src) {
            mechanism::btrfs_snapshot(&src, &dst, true)?;
            (Mechanism::Btrfs, true)
        } else {
            // Copy under a temporary name so a failure leaves no half version.
            let reflink = mechanism::reflink_works(&self.root);
            mechanism::remove_tree(&tmp)?;
            mechanism::copy_tree(&src, &tmp, reflink).inspect_err(|_| {
                let _ = mechanism::remove_tree(&tmp);
            })?;
            // An immutable directory cannot be renamed: rename first.
            fs::rename(&tmp, &dst).map_err(|e| {
                NfsrootError::io(format!("renaming {} into place", dst.display()), e)
            })?;
            // Immutable flags make the version read-only even for root, but
            // overlayfs copies them up into a clone, which would then be
            // read-only too. So they are only set where clones are reflink
            // copies; where clones must be overlays the version is
            // read-only by convention (and `image ls` says so).
            let enforced = reflink
                && mechanism::set_immutable_tree(&dst, true).inspect_err(|_| {
                    let _ = mechanism::remove_tree(&dst);
                })?;
            (
                if reflink {
                    Mechanism::Reflink
                } else {
                    Mechanism::Copy
                },
                enforced,
            )
        };
        let meta = Meta {
            format: 1,
            kind: Kind::Version,
            origin: Some(name.into()),
            mechanism: Some(mechanism),
            created: now(),
            enforced_read_only: enforced,
        };
        self.write_meta(&version, &meta)?;
        Ok(Made {
            name: version,
            mechanism,
            fstab_line: None,
            enforced_read_only: enforced,
        })
    }

    /// A writable clone of `src` named `dst`, by the cheapest mechanism (or `forced`).
    pub fn clone_image(&self, src: &str, dst: &str, forced: Option<Mechanism>) -> Result<Made> {
        self.check_new_name(dst)?;
        let from = self.path(src);
        let to = self.path(dst);
        let mech = mechanism::choose(&from, &self.root, forced)?;
        let src_meta = self.meta(src)?;
        if mech == Mechanism::Overlay
            && src_meta.enforced_read_only
            && src_meta.mechanism != Some(Mechanism::Btrfs)
        {
            return Err(NfsrootError::Image(format!(
                "{src} carries immutable flags, which overlayfs would copy into the clone; use --mechanism reflink"
            )));
        }
        let mut fstab_line = None;
        match mech {
            Mechanism::Btrfs => mechanism::btrfs_snapshot(&from, &to, false)?,
            Mechanism::Reflink | Mechanism::Copy => {
                let tmp = self.root.join(format!(".{dst}.partial"));
                mechanism::remove_tree(&tmp)?;
                mechanism::copy_tree(&from, &tmp, mech == Mechanism::Reflink).inspect_err(
                    |_| {
                        let _ = mechanism::remove_tree(&tmp);
                    },
                )?;
                // A copy of an immutable version is itself immutable on some
                // file systems' cp; make sure the clone is writable.
                mechanism::set_immutable_tree(&tmp, false)?;
                fs::rename(&tmp, &to).map_err(|e| {
                    NfsrootError::io(format!("renaming {} into place", to.display()), e)
                })?;
            }
            Mechanism::Overlay => {
                let od = self.overlay_dir(dst);
                let (upper, work) = (od.join("upper"), od.join("work"));
                for d in [&upper, &work, &to] {
                    fs::create_dir_all(d)
                        .map_err(|e| NfsrootError::io(format!("creating {}", d.display()), e))?;
                }
                if let Err(e) = mechanism::overlay_mount(&from, &upper, &work, &to) {
                    let _ = fs::remove_dir_all(&od);
                    let _ = fs::remove_dir(&to);
                    return Err(e);
                }
                fstab_line = Some(format!(
                    "overlay {} overlay {} 0 0",
                    to.display(),
                    mechanism::overlay_options(&from, &upper, &work)
                ));
            }
        }
        let meta = Meta {
            format: 1,
            kind: Kind::Clone,
            origin: Some(src.into()),
            mechanism: Some(mech),
            created: now(),
            enforced_read_only: false,
        };
        self.write_meta(dst, &meta)?;
        Ok(Made {
            name: dst.into(),
            mechanism: mech,
            fstab_line,
            enforced_read_only: false,
        })
    }

    /// Mount the overlay of an overlay clone again (after a server reboot).
    pub fn mount(&self, name: &str) -> Result<bool> {
        let meta = self.meta(name)?;
        if meta.mechanism != Some(Mechanism::Overlay) || meta.kind != Kind::Clone {
            return Err(NfsrootError::Image(format!(
                "{name} is not an overlay clone; nothing to mount"
            )));
        }
        let to = self.path(name);
        if mechanism::is_mountpoint(&to) {
            return Ok(false);
        }
        let origin = meta.origin.unwrap_or_default();
        let od = self.overlay_dir(name);
        mechanism::overlay_mount(
            &self.path(&origin),
            &od.join("upper"),
            &od.join("work"),
            &to,
        )?;
        Ok(true)
    }

    /// Remove an entry. Refused while other entries were made from it.
    pub fn remove(&self, name: &str) -> Result<()> {
        let meta = self.meta(name)?;
        if let Some(child) = self
            .list()?
            .into_iter()
            .find(|e| e.meta.origin.as_deref() == Some(name) && e.name != name)
        {
            return Err(NfsrootError::Image(format!(
                "{name} is the origin of {}; remove that first",
                child.name
            )));
        }
        let p = self.path(name);
        if meta.mechanism == Some(Mechanism::Overlay) && meta.kind == Kind::Clone {
            if mechanism::is_mountpoint(&p) {
                mechanism::umount(&p)?;
            }
            let od = self.overlay_dir(name);
            fs::remove_dir_all(&od)
                .map_err(|e| NfsrootError::io(format!("removing {}", od.display()), e))?;
            let _ = fs::remove_dir(&p);
        } else {
            mechanism::remove_tree(&p)?;
        }
        fs::remove_file(self.meta_path(name))
            .map_err(|e| NfsrootError::io(format!("removing metadata of {name}"), e))
    }
}
