// krg status page: redraw the tables from /status.json every second, so the
// page stays live without a reload. Values are set with textContent only
// (never as HTML): command lines and user names come from users.
"use strict";
(function () {
  const query = window.location.search;
  const human = (b) => {
    if (b === null || b === undefined) return "-";
    if (b >= 1 << 30) return (b / (1 << 30)).toFixed(1) + " GiB";
    return Math.round(b / (1 << 20)) + " MiB";
  };
  const dash = (v) => (v === null || v === undefined ? "-" : String(v));
  const setText = (id, text) => {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  };
  const fill = (tbodyOf, rows) => {
    const body = document.querySelector(tbodyOf);
    if (!body) return;
    const fresh = document.createElement("tbody");
    for (const r of rows) {
      const tr = document.createElement("tr");
      if (r.cls) tr.className = r.cls;
      if (r.node !== undefined) tr.dataset.node = String(r.node);
      for (const c of r.cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.appendChild(td);
      }
      fresh.appendChild(tr);
    }
    body.replaceWith(fresh);
  };
  const draw = (s) => {
    setText("leader", s.leader === null ? "none" : String(s.leader));
    setText("epoch", String(s.epoch));
    setText("term", String(s.term));
    const health = document.getElementById("health");
    if (health) {
      health.textContent = s.health;
      health.className = s.health;
    }
    setText("placement", s.placement);
    fill("#nodes tbody", s.nodes.map((n) => ({
      cls: n.state,
      node: n.id,
      cells: [String(n.id), n.state, n.address, n.mac, dash(n.load), human(n.mem_free_bytes),
        dash(n.jobs), human(n.kdfs_size_bytes), human(n.kdfs_free_bytes),
        n.owner ? n.owner.user + " until " + n.owner.until : "-"],
    })));
    fill("#processes tbody", s.processes.map((p) => ({
      cells: [String(p.node), String(p.pid), p.user, p.command],
    })));
    setText("updated", "updated " + new Date().toLocaleTimeString());
  };
  const poll = async () => {
    try {
      const r = await fetch("/status.json" + query, { cache: "no-store" });
      if (r.ok) draw(await r.json());
      else setText("updated", "krgd answered " + r.status);
    } catch (e) {
      setText("updated", "krgd does not answer");
    }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
})();
