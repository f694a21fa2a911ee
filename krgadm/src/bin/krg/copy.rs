//! `krg push` and `krg get` (C3's cpush and cget): runs of krgd's built-in
//! copy programs on each node, with the user's credentials there. A push
//! streams the file once to every node (with the same back-pressure as
//! stdin); a get writes each node's copy to `<dir>/<name>.node<N>`.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use krg_proto::proc::{JobSpec, Placement, Program, RunRequest};

use crate::nodesel::NodeSel;
use crate::output::{self, Labels};
use crate::session::{self, Plan};
use crate::spec;

fn copy_spec(program: Program, stdin: bool) -> Result<JobSpec> {
    Ok(JobSpec {
        program,
        argv: Vec::new(),
        env: Vec::new(),
        cwd: spec::cwd()?,
        tty: None,
        detach: false,
        stdin,
    })
}

fn placement(nodes: &NodeSel) -> Result<Placement> {
    let p = nodes.placement(Placement::AllOnline)?;
    if p == Placement::AllOnline && !nodes.all {
        bail!("say which nodes: -n LIST or -a");
    }
    Ok(p)
}

/// `krg push SOURCE [DEST]`.
pub async fn push(
    socket: &Path,
    nodes: &NodeSel,
    source: &Path,
    dest: Option<&Path>,
) -> Result<u8> {
    let file = std::fs::File::open(source).with_context(|| format!("{}", source.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("{}", source.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", source.display());
    }
    let name = source
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .ok_or_else(|| anyhow::anyhow!("{} has no file name", source.display()))?;
    let dest: PathBuf = match dest {
        Some(d) => d.to_path_buf(),
        None => std::path::absolute(source).with_context(|| format!("{}", source.display()))?,
    };
    let program = Program::WriteFile {
        path: dest.as_os_str().as_bytes().to_vec(),
        name,
        mode: meta.permissions().mode() & 0o777,
    };
    let req = RunRequest {
        spec: copy_spec(program, true)?,
        placement: placement(nodes)?,
        per_node: 1,
    };
    let opened = session::open(socket, req).await?;
    let labels = Labels {
        nodes: opened.jobs.clone(),
        per_node: 1,
    };
    let plan = Plan {
        image: None,
        input: Some(Box::new(file)),
        input_ready: None,
        sink: Box::new(output::Prefixed::new(labels)),
        tty: false,
        signals: None,
    };
    let ends = session::drive(opened, plan).await?;
    Ok(u8::from(ends.iter().any(|e| session::code_of(e) != 0)))
}

/// `krg get SOURCE [DIR]`.
pub async fn get(socket: &Path, nodes: &NodeSel, source: &Path, dest: Option<&Path>) -> Result<u8> {
    let dir = dest.unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let name = source
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} has no file name", source.display()))?
        .to_os_string();
    let req = RunRequest {
        spec: copy_spec(
            Program::ReadFile {
                path: source.as_os_str().as_bytes().to_vec(),
            },
            false,
        )?,
        placement: placement(nodes)?,
        per_node: 1,
    };
    let opened = session::open(socket, req).await?;
    let paths = opened
        .jobs
        .iter()
        .map(|n| {
            let mut f = name.clone();
            f.push(format!(".node{n}"));
            dir.join(f)
        })
        .collect();
    let labels = Labels {
        nodes: opened.jobs.clone(),
        per_node: 1,
    };
    let plan = Plan {
        image: None,
        input: None,
        input_ready: None,
        sink: Box::new(output::Files::new(labels, paths)),
        tty: false,
        signals: None,
    };
    let ends = session::drive(opened, plan).await?;
    Ok(u8::from(ends.iter().any(|e| session::code_of(e) != 0)))
}
