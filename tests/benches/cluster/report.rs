//! What one run measures, and the table printed at the end.

use std::time::Duration;

/// What one run measures; None where the phase failed or timed out.
#[derive(Default)]
pub struct Figures {
    pub formation: Option<Duration>,
    /// krg: `nodes add` returned; serf: `serf join` returned.
    pub join_returned: Option<Duration>,
    /// Until every node (old and new) sees the new one as a member.
    pub join_all: Option<Duration>,
    pub failure: Option<Duration>,
    pub rss_median_kib: Option<u64>,
    pub rss_max_kib: Option<u64>,
    /// krg: RSS of the Raft leader (which grows with the member count).
    pub rss_leader_kib: Option<u64>,
    /// Nodes wrongly reported failed during the run, as "observer→node".
    pub false_positives: Vec<String>,
    pub error: Option<String>,
}

impl Figures {
    pub fn print(&self, who: &str) {
        println!(
            "{who}: formation {}, join returned {}, join seen by all {}, failure detected by all {}, \
             RSS median {} max {}{}{}",
            secs(self.formation),
            secs(self.join_returned),
            secs(self.join_all),
            secs(self.failure),
            mib(self.rss_median_kib),
            mib(self.rss_max_kib),
            if self.false_positives.is_empty() {
                String::new()
            } else {
                format!(", FALSE POSITIVES: {:?}", self.false_positives)
            },
            self.error
                .as_ref()
                .map(|e| format!(", FAILED: {e}"))
                .unwrap_or_default(),
        );
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3} s", d.as_secs_f64()))
        .unwrap_or_else(|| "—".into())
}

fn mib(k: Option<u64>) -> String {
    k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "—".into())
}

/// Median and maximum of the runs that measured something.
fn med_max(v: &[Option<f64>]) -> (Option<f64>, Option<f64>) {
    let mut v: Vec<f64> = v.iter().flatten().copied().collect();
    v.sort_by(f64::total_cmp);
    (v.get(v.len() / 2).copied(), v.last().copied())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

type Pick = fn(&Figures) -> Option<f64>;

fn time(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn kib(k: Option<u64>) -> Option<f64> {
    k.map(|k| k as f64)
}

pub fn print_table(rows: &[(u32, Vec<Figures>, Vec<Figures>)]) {
    println!();
    println!("| N   | runs | measure                      | krg median | krg worst  | serf median | serf worst | krg/serf |");
    println!("|-----|------|------------------------------|------------|------------|-------------|------------|----------|");
    let lines: [(&str, Pick, bool); 7] = [
        ("formation (all see N online)", |f| time(f.formation), true),
        ("join (command returns)", |f| time(f.join_returned), true),
        ("join (all see N+1)", |f| time(f.join_all), true),
        ("failure detected by all", |f| time(f.failure), true),
        ("RSS per node, median", |f| kib(f.rss_median_kib), false),
        ("RSS per node, max", |f| kib(f.rss_max_kib), false),
        ("RSS of the Raft leader", |f| kib(f.rss_leader_kib), false),
    ];
    for (n, ours, theirs) in rows {
        for (what, pick, is_time) in lines {
            let (am, ax) = med_max(&ours.iter().map(pick).collect::<Vec<_>>());
            let (bm, bx) = med_max(&theirs.iter().map(pick).collect::<Vec<_>>());
            let show = |v: Option<f64>| match (v, is_time) {
                (None, _) => "—".to_string(),
                (Some(s), true) => format!("{s:.3} s"),
                (Some(k), false) => format!("{:.1} MiB", k / 1024.0),
            };
            let mut r = ratio(am, bm);
            if what.contains("returns") && r != "—" {
                r.push('*');
            }
            println!(
                "| {n:<3} | {:>4} | {what:<28} | {:>10} | {:>10} | {:>11} | {:>10} | {r:>8} |",
                ours.len(),
                show(am),
                show(ax),
                show(bm),
                show(bx),
            );
        }
        for (who, runs) in [("krg", ours), ("serf", theirs)] {
            for f in runs {
                if !f.false_positives.is_empty() {
                    println!(
                        "| {n:<3} | false positives ({who}): {:?}",
                        f.false_positives
                    );
                }
                if let Some(e) = &f.error {
                    println!("| {n:<3} | failed run ({who}): {e}");
                }
            }
        }
    }
}
