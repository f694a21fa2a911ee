//! `image build`: a Debian root file system made by debootstrap (or copied
//! from a prepared tree), with the krg binaries, a krgd unit, the cluster
//! key and the /config/krg_scheduler mount point installed in it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{mechanism, netboot, Store};
use crate::atomic::write_atomic;
use crate::error::{NfsrootError, Result};
use crate::tools::find_tool;

/// krg programs copied into the image when found in `--krg-bin-dir`
/// (krgd is required, the others are optional).
pub const KRG_BINARIES: &[&str] = &[
    "krgd",
    "krgadm",
    "checkpoint",
    "restart",
    "krgcapset",
    "mkfs.kdfs",
    "mount.kdfs",
    "fsck.kdfs",
    "krg",
    "migrate",
];

#[derive(Debug, Clone)]
pub enum BuildSource {
    /// debootstrap SUITE from MIRROR (None: the first matching apt source of this system).
    Debootstrap {
        suite: String,
        mirror: Option<String>,
        variant: String,
        include: Vec<String>,
    },
    /// Copy a prepared root tree.
    Tree(PathBuf),
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub source: BuildSource,
    /// Directory holding the krg binaries to install.
    pub krg_bin_dir: Option<PathBuf>,
    /// A rendered `<out>/root` tree (fstab, hosts, krgd.toml) to copy in.
    pub config_tree: Option<PathBuf>,
}

const KRGD_UNIT: &str = "\
# Installed by nfsroot image build.
[Unit]
Description=krg node daemon
Documentation=man:krgd(8)
After=network-online.target
Wants=network-online.target

[Service]
# Settings: /etc/krg/krgd.toml; node_id= and session_id= also come from the
# kernel command line the boot menu passes.
ExecStart=/usr/local/sbin/krgd
Restart=on-failure
RestartSec=2
# A diskless node keeps no log of its own: krgd's messages (a refused node id,
# a missing key) also go to the console, which a console server records.
StandardOutput=journal+console
StandardError=journal+console
Environment=RUST_LOG=info
KillMode=mixed
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
";

/// The first apt source of this system that carries `suite`, read from
/// /etc/apt/sources.list and sources.list.d (one-line and deb822 formats).
pub fn apt_mirror(suite: &str) -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .find_map(|t| mirror_in(&t, suite))
}

fn mirror_in(text: &str, suite: &str) -> Option<String> {
    // One-line format: deb [opts] URI SUITE COMPONENTS...
    for line in text.lines().map(str::trim) {
        let mut words = line
            .split_whitespace()
            .filter(|w| !w.starts_with('[') && !w.ends_with(']'));
        if words.next() == Some("deb") {
            if let (Some(uri), Some(s)) = (words.next(), words.next()) {
                if s == suite {
                    return Some(uri.to_string());
                }
            }
        }
    }
    // deb822 format: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|x| x == "deb"));
        let has_suite = field("Suites").is_some_and(|s| s.split_whitespace().any(|x| x == suite));
        if is_deb && has_suite {
            if let Some(uris) = field("URIs") {
                return uris.split_whitespace().next().map(str::to_string);
            }
        }
    }
    None
}

impl Store {
    /// Build image `name`. It appears under its name only when complete.
    pub fn build(
        &self,
        name: &str,
        opts: &BuildOptions,
        log: &mut dyn FnMut(&str),
    ) -> Result<PathBuf> {
        self.check_new_name(name)?;
        let tmp = self.root.join(format!(".{name}.building"));
        if tmp.exists() {
            self.discard(&tmp)?;
        }
        // On btrfs the image is a subvolume, so that versions and clones are snapshots.
        if mechanism::is_btrfs(&self.root)? {
            mechanism::btrfs_create(&tmp)?;
            log("image is a btrfs subvolume: versions and clones will be snapshots");
        }
        let result = self.fill(&tmp, opts, log);
        if let Err(e) = result {
            let _ = self.discard(&tmp);
            return Err(e);
        }
        let dst = self.path(name);
        fs::rename(&tmp, &dst)
            .map_err(|e| NfsrootError::io(format!("renaming {} into place", dst.display()), e))?;
        self.register_image(name)?;
        Ok(dst)
    }

    /// Put the krg binaries of `opts.krg_bin_dir` and the rendered
    /// `opts.config_tree` into the existing writable image `name` (after a
    /// rebuild of krg), to be versioned again with `snapshot`. Refused for
    /// versions and clones, and while a clone or version was made from the
    /// image (an overlay clone would see its lower layer change under it).
    pub fn update(&self, name: &str, opts: &BuildOptions, log: &mut dyn FnMut(&str)) -> Result<()> {
        let meta = self.meta(name)?;
        if meta.kind != super::Kind::Image {
            return Err(NfsrootError::Image(format!(
                "{name} is a {}; only images made by `image build` are updated",
                meta.kind
            )));
        }
        if let Some(child) = self
            .list()?
            .into_iter()
            .find(|e| e.meta.origin.as_deref() == Some(name))
        {
            return Err(NfsrootError::Image(format!(
                "{name} is the origin of {}; remove it first, or build a new image",
                child.name
            )));
        }
        install_krg(&self.path(name), opts, log)
    }

    fn discard(&self, tmp: &Path) -> Result<()> {
        mechanism::remove_tree(tmp)
    }

    fn fill(&self, tmp: &Path, opts: &BuildOptions, log: &mut dyn FnMut(&str)) -> Result<()> {
        match &opts.source {
            BuildSource::Tree(tree) => {
                log(&format!("copying {}", tree.display()));
                fs::create_dir_all(tmp)
                    .map_err(|e| NfsrootError::io(format!("creating {}", tmp.display()), e))?;
                let src = tree.join(".");
                mechanism::run(
                    "cp",
                    &[
                        "-a".as_ref(),
                        "--reflink=auto".as_ref(),
                        "--".as_ref(),
                        src.as_os_str(),
                        tmp.as_os_str(),
                    ],
                )?;
            }
            BuildSource::Debootstrap {
                suite,
                mirror,
                variant,
                include,
            } => {
                let mirror = match mirror {
                    Some(m) => m.clone(),
                    None => apt_mirror(suite).ok_or_else(|| {
                        NfsrootError::Image(format!(
                            "no apt source of this system carries suite {suite}; pass --mirror URL"
                        ))
                    })?,
                };
                log(&format!(
                    "debootstrap {suite} from {mirror} (variant {variant})"
                ));
                debootstrap(tmp, suite, &mirror, variant, include)?;
            }
        }
        install_krg(tmp, opts, log)?;
        netboot::prepare(tmp, log)?;
        Ok(())
    }
}

fn debootstrap(
    target: &Path,
    suite: &str,
    mirror: &str,
    variant: &str,
    include: &[String],
) -> Result<()> {
    let exe = find_tool("debootstrap")?;
    let mut cmd = Command::new(exe);
    cmd.arg(format!("--variant={variant}"));
    if !include.is_empty() {
        cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd.arg(suite).arg(target).arg(mirror);
    let out = cmd.output().map_err(|e| NfsrootError::Tool {
        tool: "debootstrap".into(),
        message: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    // debootstrap's own log has the reason; its stderr only says "see log".
    let log = fs::read_to_string(target.join("debootstrap/debootstrap.log")).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr
        .lines()
        .chain(log.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    let tail = tail[tail.len().saturating_sub(4)..].join(" | ");
    Err(NfsrootError::Tool {
        tool: "debootstrap".into(),
        message: tail,
    })
}

/// Put krg into the tree: binaries, unit, key, mount point, config.
fn install_krg(root: &Path, opts: &BuildOptions, log: &mut dyn FnMut(&str)) -> Result<()> {
    let mkdir = |rel: &str, mode: u32| -> Result<()> {
        let p = root.join(rel);
        fs::create_dir_all(&p)
            .map_err(|e| NfsrootError::io(format!("creating {}", p.display()), e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| NfsrootError::io(format!("chmod {}", p.display()), e))
    };
    for (d, m) in [
        ("etc/krg", 0o755),
        ("config/krg_scheduler", 0o755),
        ("var/lib/krg", 0o700),
        ("var/chkpt", 0o755),
        ("usr/local/sbin", 0o755),
        ("usr/sbin", 0o755),
    ] {
        mkdir(d, m)?;
    }
    if let Some(dir) = &opts.krg_bin_dir {
        if !dir.join("krgd").is_file() {
            return Err(NfsrootError::Image(format!(
                "{} has no krgd binary (build it with cargo build --release)",
                dir.display()
            )));
        }
        for b in KRG_BINARIES {
            let src = dir.join(b);
            if !src.is_file() {
                continue;
            }
            // mount(8) and fsck(8) look for their <type> helpers in /sbin
            // (= /usr/sbin); the users' commands go where users look.
            let dir = if b.starts_with("mount.") || b.starts_with("fsck.") {
                "usr/sbin"
            } else if ["krg", "migrate"].contains(b) {
                "usr/local/bin"
            } else {
                "usr/local/sbin"
            };
            let dst = root.join(dir).join(b);
            fs::create_dir_all(root.join(dir))
                .map_err(|e| NfsrootError::io(format!("creating {dir} in the image"), e))?;
            fs::copy(&src, &dst).map_err(|e| {
                NfsrootError::io(format!("copying {} into the image", src.display()), e)
            })?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))
                .map_err(|e| NfsrootError::io(format!("chmod {}", dst.display()), e))?;
            log(&format!("installed {b}"));
        }
    }
    write_atomic(
        &root.join("etc/systemd/system/krgd.service"),
        KRGD_UNIT.as_bytes(),
        0o644,
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)
        .map_err(|e| NfsrootError::io(format!("creating {}", wants.display()), e))?;
    let link = wants.join("krgd.service");
    if fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("/etc/systemd/system/krgd.service", &link)
            .map_err(|e| NfsrootError::io(format!("enabling krgd in {}", link.display()), e))?;
    }
    let key = root.join("etc/krg/cluster.key");
    if !key.exists() {
        write_atomic(&key, random_key()?.as_bytes(), 0o600)?;
        log("generated /etc/krg/cluster.key (shared by every node booting this image)");
    }
    if let Some(tree) = &opts.config_tree {
        let src = tree.join(".");
        mechanism::run(
            "cp",
            &[
                "-a".as_ref(),
                "--".as_ref(),
                src.as_os_str(),
                root.as_os_str(),
            ],
        )?;
        log(&format!(
            "installed the rendered files of {}",
            tree.display()
        ));
    }
    Ok(())
}

/// 32 random bytes from the kernel, hex-encoded.
fn random_key() -> Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| NfsrootError::io("reading /dev/urandom", e))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
}

#[cfg(test)]
mod tests {
    use super::mirror_in;

    #[test]
    fn mirror_from_both_source_formats() {
        assert_eq!(
            mirror_in(
                "deb [arch=amd64] http://m.example/debian bookworm main\n",
                "bookworm"
            )
            .as_deref(),
            Some("http://m.example/debian")
        );
        let deb822 = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://b.example/x\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822, "bookworm").as_deref(),
            Some("http://a.example/debian")
        );
        assert_eq!(mirror_in(deb822, "trixie"), None);
    }
}
