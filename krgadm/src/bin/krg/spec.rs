//! The job a command line describes: its arguments, this process's
//! environment and working directory, a terminal or not, and for `--push`
//! the executable to ship.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use krg_proto::proc::{JobSpec, Program, WinSize};

/// Bytes of the environment as `NAME=value` entries.
pub fn environment() -> Vec<Vec<u8>> {
    std::env::vars_os()
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            e
        })
        .collect()
}

/// The working directory, absolute.
pub fn cwd() -> Result<Vec<u8>> {
    let dir = std::env::current_dir().context("the current directory is gone")?;
    Ok(dir.as_os_str().as_bytes().to_vec())
}

/// A job running `argv` here and now.
pub fn job(argv: &[OsString], tty: Option<WinSize>, detach: bool, stdin: bool) -> Result<JobSpec> {
    Ok(JobSpec {
        program: Program::Command,
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: environment(),
        cwd: cwd()?,
        tty,
        detach,
        stdin,
    })
}

/// The local file `name` names: itself with a '/', else found in PATH.
pub fn find_executable(name: &Path) -> Result<PathBuf> {
    if name.as_os_str().as_bytes().contains(&b'/') {
        return Ok(name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{}: command not found (here, to push it)", name.display())
}

/// For `--push`: the executable's bytes, and the spec that ships them.
pub fn pushed(mut spec: JobSpec) -> Result<(JobSpec, Vec<u8>)> {
    let Some(first) = spec.argv.first() else {
        bail!("nothing to run");
    };
    let path = find_executable(Path::new(std::ffi::OsStr::from_bytes(first)))?;
    let image = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    spec.program = Program::Image {
        name,
        len: image.len() as u64,
    };
    Ok((spec, image))
}
