//! The status page as HTML: every table rendered on the server (so it reads
//! without JavaScript), every value escaped (process command lines are the
//! users'), its style and script served from this same listener (no CDN).

use std::fmt::Write;

use super::status::Status;

/// The page's stylesheet (`/status.css`).
pub const CSS: &str = include_str!("assets/status.css");
/// The page's script (`/status.js`): polls `/status.json` and redraws.
pub const JS: &str = include_str!("assets/status.js");

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes as MiB/GiB for people.
pub fn human(bytes: Option<u64>) -> String {
    match bytes {
        None => "-".to_string(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        Some(b) => format!("{:.0} MiB", b as f64 / f64::from(1u32 << 20)),
    }
}

fn row(out: &mut String, cells: &[String]) {
    out.push_str("<tr>");
    for c in cells {
        let _ = write!(out, "<td>{}</td>", esc(c));
    }
    out.push_str("</tr>\n");
}

/// The whole page. `query` ("?token=…" or "") is carried to the script's
/// requests and the no-script refresh.
pub fn render(s: &Status, query: &str) -> String {
    let q = esc(query);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>krg cluster: node {node}</title>\
<link rel=\"stylesheet\" href=\"/status.css{q}\">\
<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>\
<script src=\"/status.js{q}\" defer></script></head>\n<body>\n\
<h1>krg cluster <span id=\"session\">session {session}</span></h1>\n\
<p id=\"summary\">node <b>{node}</b> · leader <b id=\"leader\">{leader}</b> · epoch <b id=\"epoch\">{epoch}</b> · term <b id=\"term\">{term}</b> · <span id=\"health\" class=\"{health}\">{health}</span> · <span id=\"updated\">served by krgd</span></p>\n",
        node = s.this_node,
        session = s.session,
        leader = s.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
        epoch = s.epoch,
        term = s.term,
        health = esc(&s.health),
    );
    out.push_str("<h2>Nodes</h2>\n<div class=\"scroll\"><table id=\"nodes\"><thead><tr><th>node</th><th>state</th><th>address</th><th>MAC</th><th>load</th><th>free memory</th><th>jobs</th><th>kDFS size</th><th>kDFS free</th><th>owner</th></tr></thead><tbody>\n");
    for n in &s.nodes {
        let _ = write!(out, "<tr class=\"{}\" data-node=\"{}\">", n.state, n.id);
        for c in node_cells(n) {
            let _ = write!(out, "<td>{}</td>", esc(&c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str(
        "</tbody></table></div>\n<h2>Scheduler</h2>\n<p>placement policy: <span id=\"placement\">",
    );
    out.push_str(&esc(&s.placement));
    out.push_str("</span></p>\n<h2>Processes</h2>\n<div class=\"scroll\"><table id=\"processes\"><thead><tr><th>node</th><th>PID</th><th>user</th><th>command</th></tr></thead><tbody>\n");
    for p in &s.processes {
        row(
            &mut out,
            &[
                p.node.to_string(),
                p.pid.to_string(),
                p.user.clone(),
                p.command.clone(),
            ],
        );
    }
    out.push_str("</tbody></table></div>\n<p class=\"foot\"><a href=\"/metrics\">/metrics</a> · <a href=\"/status.json\">/status.json</a></p>\n</body></html>\n");
    out
}

/// The cells of one node row, in the order of the table's columns (the
/// script draws the same columns from the JSON).
pub fn node_cells(n: &super::status::NodeRow) -> Vec<String> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    vec![
        n.id.to_string(),
        n.state.to_string(),
        n.address.clone(),
        n.mac.clone(),
        opt(n.load.clone()),
        human(n.mem_free_bytes),
        opt(n.jobs.map(|j| j.to_string())),
        human(n.kdfs_size_bytes),
        human(n.kdfs_free_bytes),
        n.owner
            .as_ref()
            .map(|o| o.text())
            .unwrap_or_else(|| "-".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::status::{NodeRow, ProcessRow, Status};
    use super::*;

    #[test]
    fn user_text_is_escaped() {
        let s = Status {
            this_node: 1,
            session: 7,
            epoch: 2,
            term: 1,
            leader: Some(1),
            health: "healthy".into(),
            nodes: vec![NodeRow {
                id: 1,
                state: "online",
                address: "127.0.0.1:1".into(),
                mac: String::new(),
                load: Some("0.1 0.2 0.3".into()),
                mem_free_bytes: Some(3 << 30),
                jobs: Some(0),
                kdfs_size_bytes: None,
                kdfs_free_bytes: None,
                owner: Some(super::super::status::OwnerCell {
                    user: "<b>eve</b>".into(),
                    until: "2026-12-02T12:00:00Z".into(),
                    reason: String::new(),
                }),
            }],
            placement: "none: <no policy>".into(),
            processes: vec![ProcessRow {
                node: 1,
                pid: 5,
                user: "alice".into(),
                command: "<script>alert(1)</script>".into(),
            }],
        };
        let html = render(&s, "?token=a\"b");
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("?token=a&quot;b"));
        assert!(html.contains("3.0 GiB"));
        assert!(html.contains("<td>&lt;b&gt;eve&lt;/b&gt; until 2026-12-02T12:00:00Z</td>"));
    }
}
