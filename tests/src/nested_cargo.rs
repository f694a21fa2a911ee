//! `cargo build` run from inside a test or a bench, shared by every crate's
//! tests (krg-tests uses it as a module; the others include this file with
//! `#[path = "../../tests/src/nested_cargo.rs"]`, as they cannot depend on
//! krg-tests).
//!
//! The variables cargo set for the test itself (CARGO_PKG_NAME,
//! CARGO_MANIFEST_DIR, OUT_DIR, ...) are removed: build scripts that watch them
//! (ring's) would otherwise see a change and rebuild half the workspace,
//! once per test crate, every test run.

use std::path::Path;
use std::process::Command;

/// `cargo build --quiet -p P...` in the profile of the running executable
/// (release when it lives in `target/release`).
pub fn cargo_build(packages: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let release = exe
        .ancestors()
        .nth(2)
        .is_some_and(|d| d.ends_with(Path::new("release")));
    if release {
        cmd.arg("--release");
    }
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_the_test = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || key == "CARGO_PRIMARY_PACKAGE"
            || key == "CARGO_TARGET_TMPDIR"
            || key == "OUT_DIR";
        if set_for_the_test {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}
