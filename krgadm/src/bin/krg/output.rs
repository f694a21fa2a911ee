//! Where the jobs' output goes: straight through for one job, line by line
//! prefixed `node12: ` for several, gathered by identical output with `-b`
//! (as clush -b), or into one file per node (`krg get`). A thread of its
//! own writes, so a blocked stdout never stops signals from being
//! forwarded; a closed stdout is reported once (the jobs' stdout is then
//! closed, as a broken pipe would).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;

use krg_proto::admin::AdminError;
use krg_proto::proc::ExitStatus;
use krg_proto::NodeId;
use tokio::sync::mpsc;

use crate::nodesel::fold;

/// How a job ended.
#[derive(Debug, Clone)]
pub enum End {
    /// It ran and ended.
    Exited(ExitStatus),
    /// It never started.
    Refused(AdminError),
    /// Its node stopped answering.
    Lost(String),
    /// It runs on, detached.
    Detached {
        /// PID as the job sees it.
        pid: i32,
        /// Output directory on its node.
        output: String,
    },
}

/// What the session loop hands the output thread.
pub enum Event {
    /// stdout bytes of a job.
    Out(u32, Vec<u8>),
    /// stderr bytes of a job.
    Err(u32, Vec<u8>),
    /// A job ended.
    End(u32, End),
    /// Told once everything before this is written out.
    Written(tokio::sync::oneshot::Sender<()>),
}

/// Names of the jobs: `node12`, or `node12.3` with several per node.
#[derive(Clone)]
pub struct Labels {
    /// Node of each job.
    pub nodes: Vec<NodeId>,
    /// Copies per node.
    pub per_node: u32,
}

impl Labels {
    /// Label of job `job`.
    pub fn of(&self, job: u32) -> String {
        let node = self.nodes.get(job as usize).copied().unwrap_or(0);
        if self.per_node > 1 {
            format!("node{node}.{}", job % self.per_node)
        } else {
            format!("node{node}")
        }
    }

    /// Node of job `job`.
    pub fn node(&self, job: u32) -> NodeId {
        self.nodes.get(job as usize).copied().unwrap_or(0)
    }
}

/// `krg: node 3: why`, whether or not `why` names the node already.
pub fn node_line(node: NodeId, why: &str) -> String {
    if why.starts_with("node ") {
        format!("krg: {why}")
    } else {
        format!("krg: node {node}: {why}")
    }
}

/// A destination for output.
pub trait Sink: Send {
    /// stdout of a job; an error means stdout is closed.
    fn stdout(&mut self, job: u32, data: &[u8]) -> std::io::Result<()>;
    /// stderr of a job.
    fn stderr(&mut self, job: u32, data: &[u8]);
    /// A job ended.
    fn end(&mut self, job: u32, end: &End);
    /// Every job ended.
    fn finish(&mut self) {}
}

fn report_end(labels: &Labels, job: u32, end: &End, quiet_exit: bool) {
    let node = labels.node(job);
    let line = match end {
        End::Exited(ExitStatus::Code(0)) => return,
        End::Exited(s) if quiet_exit => {
            let _ = s;
            return;
        }
        End::Exited(s) => format!("krg: {}: {s}", labels.of(job)),
        End::Refused(e) => node_line(node, &e.message),
        End::Lost(why) => node_line(node, why),
        End::Detached { pid, output } => {
            format!("krg: node {node}: runs detached as {node}:{pid}; output in {output}/ on node {node}")
        }
    };
    eprintln!("{line}");
}

/// One job: bytes go straight through.
pub struct Plain {
    /// The one job's label.
    pub labels: Labels,
}

impl Sink for Plain {
    fn stdout(&mut self, _job: u32, data: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }
    fn stderr(&mut self, _job: u32, data: &[u8]) {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(data);
        let _ = err.flush();
    }
    fn end(&mut self, job: u32, end: &End) {
        report_end(&self.labels, job, end, true);
    }
}

/// Several jobs: complete lines, each prefixed with its job's label.
pub struct Prefixed {
    labels: Labels,
    partial: BTreeMap<(u32, bool), Vec<u8>>,
}

impl Prefixed {
    /// For these jobs.
    pub fn new(labels: Labels) -> Prefixed {
        Prefixed {
            labels,
            partial: BTreeMap::new(),
        }
    }

    fn lines(&mut self, job: u32, is_out: bool, data: &[u8], last: bool) -> Vec<u8> {
        let buf = self.partial.entry((job, is_out)).or_default();
        buf.extend_from_slice(data);
        let cut = if last {
            buf.len()
        } else {
            buf.iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0)
        };
        let done: Vec<u8> = buf.drain(..cut).collect();
        let label = self.labels.of(job);
        let mut text = Vec::new();
        for line in done.split_inclusive(|b| *b == b'\n') {
            text.extend_from_slice(label.as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                text.push(b'\n');
            }
        }
        text
    }
}

impl Sink for Prefixed {
    fn stdout(&mut self, job: u32, data: &[u8]) -> std::io::Result<()> {
        let text = self.lines(job, true, data, false);
        let mut out = std::io::stdout().lock();
        out.write_all(&text)?;
        out.flush()
    }
    fn stderr(&mut self, job: u32, data: &[u8]) {
        let text = self.lines(job, false, data, false);
        let _ = std::io::stderr().lock().write_all(&text);
    }
    fn end(&mut self, job: u32, end: &End) {
        let out = self.lines(job, true, &[], true);
        let err = self.lines(job, false, &[], true);
        let _ = std::io::stdout().lock().write_all(&out);
        let _ = std::io::stderr().lock().write_all(&err);
        report_end(&self.labels, job, end, false);
    }
}

/// `-b`: stdout of every job kept until the end, then printed once per
/// distinct output under the folded set of nodes that printed it.
pub struct Gathered {
    prefixed: Prefixed,
    outputs: BTreeMap<u32, Vec<u8>>,
}

impl Gathered {
    /// For these jobs.
    pub fn new(labels: Labels) -> Gathered {
        Gathered {
            prefixed: Prefixed::new(labels),
            outputs: BTreeMap::new(),
        }
    }
}

impl Sink for Gathered {
    fn stdout(&mut self, job: u32, data: &[u8]) -> std::io::Result<()> {
        self.outputs.entry(job).or_default().extend_from_slice(data);
        Ok(())
    }
    fn stderr(&mut self, job: u32, data: &[u8]) {
        self.prefixed.stderr(job, data);
    }
    fn end(&mut self, job: u32, end: &End) {
        let err = self.prefixed.lines(job, false, &[], true);
        let _ = std::io::stderr().lock().write_all(&err);
        report_end(&self.prefixed.labels, job, end, false);
    }
    fn finish(&mut self) {
        let mut groups: BTreeMap<&[u8], Vec<NodeId>> = BTreeMap::new();
        for (job, out) in &self.outputs {
            groups
                .entry(out)
                .or_default()
                .push(self.prefixed.labels.node(*job));
        }
        let mut groups: Vec<(Vec<NodeId>, &[u8])> =
            groups.into_iter().map(|(o, n)| (n, o)).collect();
        groups.sort();
        let mut out = std::io::stdout().lock();
        for (nodes, text) in groups {
            let title = if nodes.len() > 1 {
                format!("{} ({})", fold(&nodes), nodes.len())
            } else {
                fold(&nodes)
            };
            let rule = "-".repeat(15);
            let _ = writeln!(out, "{rule}\n{title}\n{rule}");
            let _ = out.write_all(text);
            if !text.ends_with(b"\n") && !text.is_empty() {
                let _ = writeln!(out);
            }
        }
        let _ = out.flush();
    }
}

/// `krg get`: the stdout of each job into its own file.
pub struct Files {
    labels: Labels,
    paths: Vec<std::path::PathBuf>,
    files: BTreeMap<u32, File>,
    /// Jobs whose copy failed.
    pub failed: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Files {
    /// Job `i` writes `paths[i]`.
    pub fn new(labels: Labels, paths: Vec<std::path::PathBuf>) -> Files {
        Files {
            labels,
            paths,
            files: BTreeMap::new(),
            failed: Default::default(),
        }
    }

    fn file(&mut self, job: u32) -> std::io::Result<&mut File> {
        if !self.files.contains_key(&job) {
            let path = self
                .paths
                .get(job as usize)
                .ok_or_else(|| std::io::Error::other("no such job"))?;
            let f = File::create(path)?;
            self.files.insert(job, f);
        }
        self.files
            .get_mut(&job)
            .ok_or_else(|| std::io::Error::other("no such job"))
    }
}

impl Sink for Files {
    fn stdout(&mut self, job: u32, data: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.file(job).and_then(|f| f.write_all(data)) {
            let path = self
                .paths
                .get(job as usize)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            eprintln!("krg: {path}: {e}");
        }
        Ok(())
    }
    fn stderr(&mut self, job: u32, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        for line in text.lines() {
            eprintln!("krg: node {}: {line}", self.labels.node(job));
        }
    }
    fn end(&mut self, job: u32, end: &End) {
        let ok = matches!(end, End::Exited(ExitStatus::Code(0)));
        if ok {
            // An empty file is still a copy.
            let _ = self.file(job);
        } else {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.files.remove(&job);
            if let Some(p) = self.paths.get(job as usize) {
                let _ = std::fs::remove_file(p);
            }
        }
        report_end(&self.labels, job, end, false);
    }
}

/// Run `sink` on a thread: events in, "stdout is closed" out (once).
pub fn spawn(
    mut sink: Box<dyn Sink>,
) -> (
    mpsc::Sender<Event>,
    mpsc::Receiver<()>,
    std::thread::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let (closed_tx, closed_rx) = mpsc::channel(1);
    let handle = std::thread::spawn(move || {
        let mut closed = false;
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Out(job, data) => {
                    if !closed && sink.stdout(job, &data).is_err() {
                        closed = true;
                        let _ = closed_tx.try_send(());
                    }
                }
                Event::Err(job, data) => sink.stderr(job, &data),
                Event::End(job, end) => sink.end(job, &end),
                Event::Written(told) => {
                    let _ = told.send(());
                }
            }
        }
        sink.finish();
    });
    (tx, closed_rx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_whole() {
        let mut p = Prefixed::new(Labels {
            nodes: vec![3, 4],
            per_node: 1,
        });
        assert_eq!(p.lines(0, true, b"a\nb", false), b"node3: a\n");
        assert_eq!(p.lines(1, true, b"x\n", false), b"node4: x\n");
        assert_eq!(p.lines(0, true, b"c\n", false), b"node3: bc\n");
        assert_eq!(p.lines(0, true, b"tail", true), b"node3: tail\n");
        let two = Labels {
            nodes: vec![7, 7],
            per_node: 2,
        };
        assert_eq!(two.of(1), "node7.1");
    }
}
