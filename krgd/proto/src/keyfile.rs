//! Loading the cluster key from its file, and the default paths every krg
//! program shares (one home for them, so no binary spells them again).
//!
//! The key is the cluster's only secret: whoever reads it can join the
//! cluster, whoever writes it can lock nodes out. So a key file is refused
//! unless it is a regular file owned by root or by the user the program
//! runs as, readable and writable by that owner only — checked on the open
//! descriptor, not by path.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::auth::ClusterKey;

/// Default path of the local admin socket.
pub const DEFAULT_SOCKET: &str = "/run/krg/krgd.sock";
/// Default path of the cluster key file.
pub const DEFAULT_CLUSTER_KEY: &str = "/etc/krg/cluster.key";
/// Default mount point of the scheduler tree.
pub const DEFAULT_SCHEDULER_MOUNT: &str = "/config/krg_scheduler";
/// Default mount point of the `/krg` tree (nodes, XCPU sessions, processes).
pub const DEFAULT_KRG_MOUNT: &str = "/krg";
/// Default path of the plug-in registry.
pub const DEFAULT_PLUGIN_REGISTRY: &str = "/etc/krg/plugins.conf";

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened or read.
    #[error("cluster key file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Others could read or change it, or it is not a plain file.
    #[error("cluster key file {path}: {reason}")]
    Unsafe {
        /// The key file.
        path: PathBuf,
        /// What is wrong, and the command that fixes it.
        reason: String,
    },
    /// Its content is not a usable key.
    #[error("cluster key file {path}: {reason}")]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ClusterKey {
    /// Read the key from `path`. Any content of at least
    /// [`crate::auth::MIN_KEY_LEN`] bytes is a key; surrounding whitespace
    /// is ignored, so that `head -c 32 /dev/urandom | base64` and
    /// `echo secret… >` both make usable keys.
    pub fn from_file(path: &Path) -> Result<Self, KeyFileError> {
        let read = |source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(read)?;
        let meta = f.metadata().map_err(read)?;
        check_private(path, &meta)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(read)?;
        ClusterKey::new(bytes.trim_ascii().to_vec()).map_err(|e| KeyFileError::Invalid {
            path: path.to_path_buf(),
            reason: match e {
                crate::ProtoError::Auth(reason) => reason,
                other => other.to_string(),
            },
        })
    }
}

/// A regular file, owned by root or by us, 0600 or stricter.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    let unsafe_because = |reason: String| KeyFileError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_file() {
        return Err(unsafe_because("not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(unsafe_because(format!(
            "owned by uid {}, not by root or by this program's user (uid {me}): chown root {}",
            meta.uid(),
            path.display()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unsafe_because(format!(
            "mode {mode:04o} lets other users read or change the cluster's secret: chmod 600 {}",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn private_key_loads_and_whitespace_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "k", "  0123456789abcdef0123\n", 0o600);
        assert!(ClusterKey::from_file(&p).is_ok());
        let short = write(d.path(), "s", "short\n", 0o600);
        let e = ClusterKey::from_file(&short).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        let missing = ClusterKey::from_file(&d.path().join("none")).unwrap_err();
        assert!(matches!(missing, KeyFileError::Read { .. }));
    }

    #[test]
    fn key_others_can_read_or_write_is_refused() {
        let d = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o606, 0o660] {
            let p = write(d.path(), "k", "0123456789abcdef0123", mode);
            let e = ClusterKey::from_file(&p).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{mode:o}: {e}");
        }
    }

    #[test]
    fn key_owned_by_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give a file away; CI runs as root
        }
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "k", "0123456789abcdef0123", 0o600);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = ClusterKey::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
    }
}
