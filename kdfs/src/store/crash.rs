//! Crash points for the fsck tests: krgd (in the store) or mount.kdfs (in
//! the client's operations, `client-*` points) killing itself (SIGKILL, as
//! `kill -9` would) at a named step of an operation, so that a test can
//! stop it deterministically between the steps of a cross-node operation
//! and check what `fsck.kdfs` makes of the leftovers. krgd's migration
//! code has points of its own (`krgd-*`), for the tests of a target that
//! dies after the handover. A *failure* point ([`fails`], armed by writing
//! `fail:NAME`) makes the step fail instead, once: krgd's kDFS hand-over
//! uses one to test its undo. A *pause* point ([`pause`], `pause:NAME:MS`)
//! holds the step that long, once: the hand-over's test of its read-only
//! store uses one.
//!
//! Armed only when the process was started with `KDFS_TEST_CRASH_FILE=PATH`
//! in its environment, and only for the point whose name is written in that
//! file (the file is removed as the point fires, so it fires once). Without
//! the variable a point costs one check of a cached `Option`. It is
//! harmless in a production binary: whoever sets a daemon's environment
//! can kill it anyway, and the only effect is that kill.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The variable naming the file that arms a crash point.
pub const CRASH_FILE_ENV: &str = "KDFS_TEST_CRASH_FILE";

fn crash_file() -> Option<&'static PathBuf> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var_os(CRASH_FILE_ENV).map(PathBuf::from))
        .as_ref()
}

/// Die here (SIGKILL) if crash point `name` is armed.
pub fn point(name: &str) {
    let Some(file) = crash_file() else {
        return;
    };
    let armed = std::fs::read_to_string(file).is_ok_and(|s| s.trim() == name);
    if armed && std::fs::remove_file(file).is_ok() {
        tracing::warn!(
            point = name,
            "kdfs: crash point reached, killing this process"
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// How long pause point `name` holds its step (`pause:NAME:MS` in the
/// file), once; `None` when it is not armed.
pub fn pause(name: &str) -> Option<std::time::Duration> {
    let file = crash_file()?;
    let armed = std::fs::read_to_string(file).ok()?;
    let (point, ms) = armed.trim().strip_prefix("pause:")?.rsplit_once(':')?;
    let ms: u64 = ms.parse().ok()?;
    if point != name || std::fs::remove_file(file).is_err() {
        return None;
    }
    tracing::warn!(
        point = name,
        ms,
        "kdfs: pause point reached, holding this step"
    );
    Some(std::time::Duration::from_millis(ms))
}

/// Whether failure point `name` is armed (by `fail:NAME` in the file):
/// true once, the step is then to fail as if something it asked failed.
pub fn fails(name: &str) -> bool {
    let Some(file) = crash_file() else {
        return false;
    };
    let armed =
        std::fs::read_to_string(file).is_ok_and(|s| s.trim().strip_prefix("fail:") == Some(name));
    if armed && std::fs::remove_file(file).is_ok() {
        tracing::warn!(
            point = name,
            "kdfs: failure point reached, failing this step"
        );
        return true;
    }
    false
}
