//! Writing a [`Plan`]: compare with what is on disk, write only what
//! differs, each file atomically (temporary file in the same directory,
//! fsync, rename), and remove files an earlier render wrote that this one
//! no longer produces (a deleted node's menu). A manifest under `--out`
//! remembers what was written, so nothing else is ever removed.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::atomic::write_atomic;
use crate::diff;
use crate::error::{NfsrootError, Result};
use crate::render::{is_inside, Plan, PlannedFile};

/// Name of the manifest of rendered files, under `--out`.
pub const MANIFEST: &str = ".nfsroot-manifest";

/// What applying (or diffing) a plan did or would do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub created: Vec<PathBuf>,
    pub changed: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub dirs_created: Vec<PathBuf>,
    pub unchanged: usize,
}

impl Outcome {
    pub fn is_noop(&self) -> bool {
        self.created.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.dirs_created.is_empty()
    }
}

enum State {
    Missing,
    Same,
    Differs(Vec<u8>),
}

fn state_of(f: &PlannedFile) -> Result<State> {
    match fs::read(&f.path) {
        Ok(old) => {
            let mode = fs::metadata(&f.path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0);
            Ok(if old == f.contents && mode == f.mode {
                State::Same
            } else {
                State::Differs(old)
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::Missing),
        Err(e) => Err(NfsrootError::io(format!("reading {}", f.path.display()), e)),
    }
}

/// Refuse any destination outside the allowed roots (defence in depth: the
/// renderers only join validated names onto them).
fn check_confined(plan: &Plan, roots: &[&Path]) -> Result<()> {
    let paths = plan
        .files
        .iter()
        .map(|f| &f.path)
        .chain(plan.dirs.iter().map(|d| &d.path));
    for p in paths {
        if !roots.iter().any(|r| is_inside(p, r)) {
            return Err(NfsrootError::Image(format!(
                "refusing to write {}: outside the output and image roots",
                p.display()
            )));
        }
    }
    Ok(())
}

fn read_manifest(out: &Path) -> Vec<PathBuf> {
    fs::read_to_string(out.join(MANIFEST))
        .map(|t| {
            t.lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

fn manifest_text(plan: &Plan) -> Vec<u8> {
    let mut paths: Vec<String> = plan
        .files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    paths.sort();
    let mut s = String::from("");
    for p in paths {
        s.push_str(&p);
        s.push('\n');
    }
    s.into_bytes()
}

/// Files listed by the previous render that this plan no longer has.
fn stale(plan: &Plan, out: &Path, roots: &[&Path]) -> Vec<PathBuf> {
    read_manifest(out)
        .into_iter()
        .filter(|p| !plan.files.iter().any(|f| &f.path == p))
        .filter(|p| roots.iter().any(|r| is_inside(p, r)) && p.exists())
        .collect()
}

/// The unified diff of everything the plan would change; writes nothing.
pub fn diff(plan: &Plan, out: &Path, image_root: &Path) -> Result<(String, Outcome)> {
    let roots = [out, image_root];
    check_confined(plan, &roots)?;
    let mut text = String::new();
    let mut o = Outcome::default();
    for f in &plan.files {
        let new = String::from_utf8_lossy(&f.contents);
        let name = f.path.display();
        let binary = std::str::from_utf8(&f.contents).is_err();
        match state_of(f)? {
            State::Same => o.unchanged += 1,
            State::Missing if binary => {
                text.push_str(&format!(
                    "new binary file {name} ({} bytes)\n",
                    f.contents.len()
                ));
                o.created.push(f.path.clone());
            }
            State::Differs(old) if binary || std::str::from_utf8(&old).is_err() => {
                text.push_str(&format!(
                    "binary file {name} differs ({} -> {} bytes)\n",
                    old.len(),
                    f.contents.len()
                ));
                o.changed.push(f.path.clone());
            }
            State::Missing => {
                text.push_str(&diff::unified("", &new, "/dev/null", &format!("b{name}")));
                o.created.push(f.path.clone());
            }
            State::Differs(old) => {
                let d = diff::unified(
                    &String::from_utf8_lossy(&old),
                    &new,
                    &format!("a{name}"),
                    &format!("b{name}"),
                );
                if d.is_empty() {
                    text.push_str(&format!("mode of {name}: now {:o}\n", f.mode));
                }
                text.push_str(&d);
                o.changed.push(f.path.clone());
            }
        }
    }
    for p in stale(plan, out, &roots) {
        let old = fs::read(&p).unwrap_or_default();
        text.push_str(&diff::unified(
            &String::from_utf8_lossy(&old),
            "",
            &format!("a{}", p.display()),
            "/dev/null",
        ));
        o.removed.push(p);
    }
    for d in &plan.dirs {
        if !d.path.is_dir() {
            text.push_str(&format!("new directory {}\n", d.path.display()));
            o.dirs_created.push(d.path.clone());
        }
    }
    Ok((text, o))
}

/// Make the disk match the plan.
pub fn apply(plan: &Plan, out: &Path, image_root: &Path) -> Result<Outcome> {
    let roots = [out, image_root];
    check_confined(plan, &roots)?;
    let mut o = Outcome::default();
    for f in &plan.files {
        match state_of(f)? {
            State::Same => o.unchanged += 1,
            State::Missing => {
                write_atomic(&f.path, &f.contents, f.mode)?;
                o.created.push(f.path.clone());
            }
            State::Differs(_) => {
                write_atomic(&f.path, &f.contents, f.mode)?;
                o.changed.push(f.path.clone());
            }
        }
    }
    for p in stale(plan, out, &roots) {
        fs::remove_file(&p)
            .map_err(|e| NfsrootError::io(format!("removing {}", p.display()), e))?;
        o.removed.push(p);
    }
    for d in &plan.dirs {
        if !d.path.is_dir() {
            create_dir(&d.path, d.mode, d.seed.as_deref())?;
            o.dirs_created.push(d.path.clone());
        }
    }
    let manifest = manifest_text(plan);
    if fs::read(out.join(MANIFEST)).ok().as_deref() != Some(&manifest[..]) {
        write_atomic(&out.join(MANIFEST), &manifest, 0o644)?;
    }
    Ok(o)
}

/// Create a directory (and its parents). With a seed, build it as a copy of
/// the seed under a temporary name and rename it into place, so a failed
/// copy never leaves a half-filled directory that a re-run would accept.
fn create_dir(path: &Path, mode: u32, seed: Option<&Path>) -> Result<()> {
    let io = |what: &str, e| NfsrootError::io(format!("{what} {}", path.display()), e);
    let parent = path.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| io("creating parent of", e))?;
    match seed {
        None => {
            fs::DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(|e| io("creating", e))?;
        }
        Some(seed) => {
            let tmp = crate::atomic::temp_name(path);
            let status = Command::new("cp")
                .arg("-a")
                .arg("--reflink=auto")
                .arg("--")
                .arg(seed)
                .arg(&tmp)
                .status()
                .map_err(|e| io("running cp to fill", e))?;
            if !status.success() {
                let _ = fs::remove_dir_all(&tmp);
                return Err(NfsrootError::Tool {
                    tool: "cp".into(),
                    message: format!(
                        "copying {} to {} ({status})",
                        seed.display(),
                        path.display()
                    ),
                });
            }
            fs::rename(&tmp, path).map_err(|e| io("renaming into place", e))?;
        }
    }
    // DirBuilder's mode is filtered by the umask; set the intended one.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io("setting mode of", e))
}
