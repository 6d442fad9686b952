// Conveyor's board: renders /board/api/* with DOM calls only. Every value from the
// server (titles, descriptions, causes, alert texts) is untrusted and goes into the
// page as textContent, never as HTML.
"use strict";

(function () {
  const byId = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(target, ...children) {
    target.replaceChildren(...children.filter((child) => child !== null && child !== undefined));
  }

  function when(ts) {
    if (!ts) return "-";
    return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19);
  }

  function ago(ts) {
    if (!ts) return "-";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 120) return `${Math.round(s)}s ago`;
    if (s < 7200) return `${Math.round(s / 60)}m ago`;
    return `${(s / 3600).toFixed(1)}h ago`;
  }

  function spent(u) {
    const tokens = u.tokens ?? (u.input_tokens || 0) + (u.output_tokens || 0);
    return `$${Number(u.cost_usd || 0).toFixed(4)} / ${Number(tokens).toLocaleString("en")}`;
  }

  function table(headers, rows, empty) {
    if (!rows.length) return el("p", { class: "empty" }, empty || "none");
    const head = el("tr", {}, ...headers.map((h) => el("th", {}, h)));
    const body = rows.map((cells) =>
      el("tr", {}, ...cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))))
    );
    return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
  }

  const text = (value) => el("td", { class: "text" }, value ?? "");
  const taskLink = (id) => el("a", { href: `/board/task/${encodeURIComponent(id)}` }, id);

  async function getJson(path) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  function showError(err) {
    const box = byId("error");
    box.hidden = !err;
    box.textContent = err ? String(err.message || err) : "";
  }

  // --- the board -------------------------------------------------------------------

  let snapshot = null;

  function renderHeader(overview) {
    const health = byId("health");
    health.textContent = overview.healthy ? "healthy" : "degraded";
    health.className = `pill ${overview.healthy ? "ok" : "bad"}`;
    const states = overview.by_state || {};
    byId("summary").textContent =
      `${overview.tasks ?? 0} tasks · active ${states.active ?? 0} · escalated ${states.escalated ?? 0}` +
      ` · jobs ${Object.entries(overview.jobs || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "none"}`;
  }

  function renderControl(overview) {
    const rows = Object.entries(overview.actors || {}).sort().map(([name, info]) => [
      name,
      info.healthy ? "ok" : "down",
      text(info.error || info.reason || ""),
    ]);
    const parts = [el("h2", {}, "Control"), table(["actor", "health", "details"], rows, "no answer")];
    const cluster = overview.control || overview.cluster;
    if (cluster && typeof cluster === "object") {
      const members = [];
      if (cluster.active) members.push(["active", text(JSON.stringify(cluster.active))]);
      for (const standby of cluster.standbys || []) members.push(["standby", text(JSON.stringify(standby))]);
      if (!members.length) members.push(["control", text(JSON.stringify(cluster))]);
      parts.push(el("h2", {}, "Cluster"), table(["role", "member"], members));
    }
    fill(byId("control"), ...parts);
  }

  function card(task) {
    const node = el(
      "a",
      {
        class: `card${task.escalated ? " escalated" : ""}`,
        href: `/board/task/${encodeURIComponent(task.id)}`,
        "data-task": task.id,
      },
      el("div", { class: "id" }, task.id),
      el("div", { class: "title" }, task.title),
      el("div", { class: "meta" }, `${task.repo} · ${task.step || ""} ${task.job_status || ""} · ${ago(task.updated_at)}`)
    );
    return node;
  }

  function renderColumns(data) {
    const counts = (data.overview && data.overview.by_stage) || {};
    const tasks = (data.page && data.page.tasks) || [];
    const columns = data.stages.map((stage) => {
      const cards = tasks.filter((t) => t.stage === stage).map(card);
      return el(
        "div",
        { class: "column", "data-stage": stage },
        el("h3", {}, el("span", {}, stage), el("span", { class: "count" }, String(counts[stage] ?? cards.length))),
        ...cards
      );
    });
    fill(byId("columns"), ...columns);
    const total = (data.page && data.page.total) ?? tasks.length;
    byId("shown").textContent = `(${tasks.length} of ${total} active tasks shown)`;
  }

  function renderQueue(queue) {
    if (!queue || queue.ok === false) {
      fill(byId("queue"), el("p", { class: "error" }, (queue && queue.error) || "no answer"));
      return;
    }
    const running = (queue.running || []).map((j) => [j.id, j.role, String(j.attempt), j.host || "", ago(j.started_at)]);
    const recent = (queue.recent || []).map((j) => [j.id, j.status, String(j.attempts), text(j.error || "")]);
    const held = Object.entries(queue.held || {}).map(([repo, why]) => [repo, text(why)]);
    fill(
      byId("queue"),
      el("p", {}, `counts: ${Object.entries(queue.counts || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "none"}`),
      table(["running job", "role", "attempt", "host", "started"], running, "nothing running"),
      el("h3", {}, "recent"),
      table(["job", "status", "attempts", "error"], recent, "none yet"),
      held.length ? table(["held repo", "why"], held) : null
    );
  }

  function renderLeases(keeper) {
    if (!keeper || keeper.ok === false) {
      fill(byId("leases"), el("p", { class: "error" }, (keeper && keeper.error) || "no answer"));
      return;
    }
    const rows = (keeper.leases || []).map((l) => [l.name, l.task_id, text(l.job_id), String(l.revision), `${l.host}:${l.pid}`, ago(l.acquired_at)]);
    fill(byId("leases"), table(["lease", "task", "job", "revision", "holder", "since"], rows, "no lease held"));
  }

  function alertRow(a) {
    return [when(a.at), a.level, a.kind || "", a.task_id ? taskLink(a.task_id) : "", text(a.text)];
  }

  function renderAlerts(alerts) {
    fill(byId("alerts"), table(["at", "level", "kind", "task", "text"], alerts.map(alertRow), "no recent alerts"));
  }

  async function loadBoard() {
    try {
      snapshot = await getJson("/board/api/overview");
      renderHeader(snapshot.overview || {});
      renderControl(snapshot.overview || {});
      renderColumns(snapshot);
      renderQueue(snapshot.queue);
      renderLeases(snapshot.leases);
      renderAlerts(snapshot.alerts || []);
      showError(null);
    } catch (err) {
      showError(err);
    }
  }

  // A stage change moves its card at once; the counts follow with the next read.
  function moveCard(event) {
    if (!snapshot) return;
    const row = ((snapshot.page && snapshot.page.tasks) || []).find((t) => t.id === event.task_id);
    if (row) row.stage = event.new;
    const node = document.querySelector(`.card[data-task="${CSS.escape(event.task_id)}"]`);
    const column = document.querySelector(`.column[data-stage="${CSS.escape(event.new)}"]`);
    if (node && column) {
      column.append(node);
      node.classList.add("moved");
    }
  }

  // --- one task ----------------------------------------------------------------------

  async function loadTask(id) {
    try {
      const [t, board] = await Promise.all([
        getJson(`/board/api/task/${encodeURIComponent(id)}`),
        getJson("/board/api/overview"),
      ]);
      renderHeader(board.overview || {});
      document.title = `${t.id} · Conveyor`;
      byId("task-title").textContent = `${t.id} ${t.title}`;
      const facts = [
        ["repo", t.repo], ["branch", t.branch], ["stage", t.stage], ["step", t.step],
        ["job", `${t.job_id || "-"} [${t.job_status || "-"}]`], ["escalated", t.escalated ? "yes" : "no"],
        ["retries", String(t.developer_retries ?? 0)], ["spent", spent(t)], ["last", t.last_reason || "-"],
      ];
      if (t.job_reason) facts.push(["job failed", t.job_reason]);
      fill(byId("task-facts"), ...facts.map(([k, v]) => el("span", {}, el("b", {}, `${k}: `), v)));
      const history = (t.history || []).map((h) => [when(h.at), h.old || "-", h.new, spent(h), text(h.cause)]);
      fill(byId("timeline"), table(["at", "from", "to", "cost / tokens", "cause"], history));
      const jobs = (t.jobs || []).map((j) => [
        text(j.id), j.role, j.status, `${j.attempts}/${j.max_attempts}`, when(j.started_at), when(j.finished_at),
        j.exit_code === null || j.exit_code === undefined ? "-" : String(j.exit_code),
        `$${Number(j.cost_usd || 0).toFixed(4)}`, text(j.reason || j.error || ""),
      ]);
      fill(byId("jobs"), table(["job", "role", "status", "attempts", "started", "finished", "exit", "cost", "why"], jobs, "no jobs"));
      const briefs = (t.briefs || []).map((b) => [when(b.at), b.stage || "", b.kind || "", String(b.count || 1), text(b.text)]);
      fill(byId("briefs"), table(["at", "stage", "kind", "seen", "brief"], briefs, "no rework briefs"));
      const effects = (t.effects || []).map((e) => [text(e.key), e.status, when(e.started_at), when(e.done_at), text(e.result || ""), e.by || ""]);
      fill(byId("effects"), table(["idempotency key", "status", "started", "done", "result", "by"], effects, "no external effects yet"));
      byId("description").textContent = t.description || "";
      showError(null);
    } catch (err) {
      showError(err);
    }
  }

  // --- live updates ------------------------------------------------------------------

  function debounce(fn, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  function connect(onEvent) {
    const live = byId("live");
    const source = new EventSource("/board/events");
    source.onopen = () => {
      live.textContent = "live";
      live.className = "pill ok";
    };
    source.onerror = () => {
      live.textContent = "reconnecting";
      live.className = "pill off";
    };
    source.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (_err) {
        return;
      }
      onEvent(event);
    };
  }

  function start() {
    const match = location.pathname.match(/^\/board\/task\/([^/]+)$/);
    if (match) {
      const id = decodeURIComponent(match[1]);
      byId("task-view").hidden = false;
      const reload = debounce(() => loadTask(id), 200);
      loadTask(id);
      connect((event) => {
        if (event.type === "resync" || event.task_id === id) reload();
      });
      return;
    }
    byId("board-view").hidden = false;
    const reload = debounce(loadBoard, 300);
    loadBoard();
    connect((event) => {
      if (event.type === "stage") moveCard(event);
      if (event.type === "alert" && snapshot) {
        snapshot.alerts = [event, ...(snapshot.alerts || [])].slice(0, 50);
        renderAlerts(snapshot.alerts);
      }
      reload();
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
