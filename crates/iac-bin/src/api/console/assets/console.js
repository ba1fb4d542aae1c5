// The iac console's script: progressive parts of the server-rendered pages. It calls the admin
// API on the same origin with the session cookie (no token is ever stored in the page or in
// localStorage). One init function per page, chosen by <body data-page>.
"use strict";

const STAGES = ["fetch", "resolve", "build", "certs", "render", "release", "provision", "health"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error.message + " (" + body.error.code + ")";
  } catch (_) { /* not JSON */ }
  return "HTTP " + resp.status;
}

// Reads an NDJSON response body, calling onItem for every parsed line.
async function readNdjson(resp, onItem, signal) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    if (signal && signal.aborted) { reader.cancel(); return; }
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) onItem(JSON.parse(line));
    }
  }
  if (buf.trim()) onItem(JSON.parse(buf));
}

// A service x stage table fed with DeployEvents (and, at the end, the report).
class Progress {
  constructor(table) {
    this.table = table;
    this.rows = new Map();
    const head = el("tr", {}, el("th", { scope: "col", text: "Service" }));
    for (const s of STAGES) head.append(el("th", { scope: "col", text: s }));
    head.append(el("th", { scope: "col", text: "State" }));
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren();
  }
  row(service) {
    let r = this.rows.get(service);
    if (!r) {
      r = el("tr", { "data-service": service }, el("th", { scope: "row", text: service }));
      for (const s of STAGES) r.append(el("td", { "data-stage": s, class: "stage" }));
      r.append(el("td", { class: "state", text: "running" }));
      this.table.tBodies[0].append(r);
      this.rows.set(service, r);
    }
    return r;
  }
  event(e) {
    if (!e.service) return;
    const r = this.row(e.service);
    const cell = r.querySelector('td[data-stage="' + e.stage + '"]');
    if (!cell) return;
    cell.textContent = e.message.length > 90 ? e.message.slice(0, 87) + "…" : e.message;
    cell.title = e.ts + " " + e.message;
    cell.className = "stage lvl-" + e.level;
    if (e.level === "error") this.state(e.service, "FAILED");
  }
  state(service, text) {
    const cell = this.row(service).querySelector("td.state");
    cell.replaceChildren(el("span", { class: "badge h-" + text, text }));
    this.row(service).dataset.state = text;
  }
  report(rep) {
    for (const s of rep.services || []) {
      this.state(s.service, s.health ? s.health.state : (s.ok ? "OK" : "FAILED"));
    }
  }
}

// ---- deploy page ----

function deployRow(container) {
  const t = document.getElementById("row-template").content.firstElementChild.cloneNode(true);
  const n = container.children.length + 1;
  for (const field of t.querySelectorAll("input, select, textarea")) {
    const id = "svc" + n + "-" + field.name;
    field.id = id;
    field.closest(".field").querySelector("label").htmlFor = id;
  }
  t.querySelector(".remove-row").addEventListener("click", () => {
    if (container.children.length > 1) t.remove();
  });
  t.querySelector(".load-refs").addEventListener("click", () => loadRefs(t));
  t.querySelector('input[name="slug"]').addEventListener("change", () => loadRefs(t));
  container.append(t);
  return t;
}

async function loadRefs(row) {
  const status = document.getElementById("status");
  const slug = row.querySelector('input[name="slug"]').value.trim().split("#")[0];
  const select = row.querySelector('select[name="ref"]');
  if (!slug) { status.textContent = "Enter a slug first."; return; }
  status.textContent = "Loading branches and tags of " + slug + "…";
  const resp = await fetch("/refs?slug=" + encodeURIComponent(slug), { credentials: "same-origin" });
  if (!resp.ok) { status.textContent = "Branches of " + slug + ": " + await errorText(resp); return; }
  const refs = await resp.json();
  const opts = [el("option", { value: "", text: "(default" + (refs.default ? ": " + refs.default : "") + ")" })];
  const branches = el("optgroup", { label: "Branches" });
  for (const b of refs.branches || []) branches.append(el("option", { value: b, text: b }));
  const tags = el("optgroup", { label: "Tags" });
  for (const t of refs.tags || []) tags.append(el("option", { value: t, text: t }));
  select.replaceChildren(...opts, branches, tags);
  if (refs.default) select.value = refs.default;
  status.textContent = (refs.branches || []).length + " branches, " + (refs.tags || []).length + " tags of " + slug + ".";
}

// The request body from the form: the pasted repos file (converted by the server) or the rows.
async function deployBody(project) {
  const repos = document.getElementById("repos").value;
  if (repos.trim()) {
    const resp = await fetch("/console/repos", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "text/plain" }, body: repos,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    const j = await resp.json();
    return { project, slugs: j.slugs };
  }
  const slugs = [];
  for (const row of document.querySelectorAll("#rows .svc-row")) {
    const v = (name) => row.querySelector('[name="' + name + '"]').value.trim();
    let slug = v("slug");
    if (!slug) continue;
    if (v("ref")) slug = slug.split("#")[0] + "#" + v("ref");
    const item = { slug };
    if (v("name")) item.name = v("name");
    if (v("entrypoint")) item.entrypoint = v("entrypoint");
    // expose: true/false, a host port, or "IP:PORT", as in a repos file.
    const ex = v("expose");
    if (ex === "true" || ex === "false") item.expose = ex === "true";
    else if (/^[0-9]+$/.test(ex)) item.expose = Number(ex);
    else if (ex) item.expose = ex;
    const env = {};
    for (const line of v("env").split("\n")) {
      if (!line.trim()) continue;
      const i = line.indexOf("=");
      if (i <= 0) throw new Error("env line " + JSON.stringify(line) + ": expected KEY=VALUE");
      env[line.slice(0, i).trim()] = line.slice(i + 1);
    }
    if (Object.keys(env).length) item.env = env;
    slugs.push(Object.keys(item).length === 1 ? slug : item);
  }
  if (!slugs.length) throw new Error("Add at least one slug, or paste a repos file.");
  return { project, slugs };
}

function initDeploy() {
  const project = document.body.dataset.project;
  const rows = document.getElementById("rows");
  const status = document.getElementById("status");
  const confirmBtn = document.getElementById("confirm");
  let planned = null;
  deployRow(rows);
  document.getElementById("add-row").addEventListener("click", () => {
    deployRow(rows).querySelector("input").focus();
  });
  document.getElementById("deploy-form").addEventListener("input", () => {
    planned = null;
    confirmBtn.disabled = true;
  });
  document.getElementById("preview").addEventListener("click", async () => {
    confirmBtn.disabled = true;
    let body;
    try { body = await deployBody(project); } catch (e) { status.textContent = e.message; return; }
    status.textContent = "Planning (fetching sources, resolving entries)…";
    const resp = await fetch("/plan", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    if (!resp.ok) { status.textContent = "Plan failed: " + await errorText(resp); return; }
    const plan = await resp.json();
    const tbody = document.querySelector("#plan tbody");
    tbody.replaceChildren();
    for (const c of plan.changes) {
      tbody.append(el("tr", { "data-service": c.service, "data-action": c.action },
        el("th", { scope: "row", text: c.service }),
        el("td", {}, el("span", { class: "badge a-" + c.action, text: c.action })),
        el("td", { class: "wrap", text: c.reason })));
    }
    for (const f of plan.failures) {
      tbody.append(el("tr", { "data-service": f.service, "data-action": "error" },
        el("th", { scope: "row", text: f.service }),
        el("td", {}, el("span", { class: "badge bad", text: "error" })),
        el("td", { class: "wrap", text: f.error })));
    }
    document.getElementById("plan-box").hidden = false;
    planned = body;
    confirmBtn.disabled = plan.failures.length > 0;
    status.textContent = plan.failures.length
      ? "The plan has errors; fix them before deploying."
      : "Review the plan, then press Deploy.";
    if (!confirmBtn.disabled) confirmBtn.focus();
  });
  confirmBtn.addEventListener("click", async () => {
    if (!planned) return;
    confirmBtn.disabled = true;
    document.getElementById("preview").disabled = true;
    const box = document.getElementById("progress-box");
    box.hidden = false;
    const progress = new Progress(document.getElementById("progress"));
    const result = document.getElementById("result");
    result.textContent = "";
    status.textContent = "Deploying…";
    const resp = await fetch("/deploy", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" }, body: JSON.stringify(planned),
    });
    if (resp.status !== 202) {
      status.textContent = "Deploy refused: " + await errorText(resp);
      document.getElementById("preview").disabled = false;
      return;
    }
    const id = resp.headers.get("x-deployment-id");
    status.replaceChildren("Deploying… ", el("a", { href: "/history/" + id, text: "deployment " + id }));
    await readNdjson(resp, (item) => {
      if (item.type === "event") progress.event(item);
      else if (item.type === "report") {
        progress.report(item);
        const all = (item.services || []).every((s) => s.health && s.health.state === "SERVING");
        result.textContent = item.ok
          ? (all ? "Deployed: every service is SERVING." : "Deployed.")
          : "Deploy failed: " + (item.error || (item.services || []).filter((s) => !s.ok).map((s) => s.service + ": " + s.error).join("; "));
        result.className = item.ok ? "ok" : "error";
        result.dataset.ok = String(item.ok);
      } else if (item.type === "error") {
        result.textContent = "Deploy could not run: " + item.message + " (" + item.code + ")";
        result.className = "error";
        result.dataset.ok = "false";
      }
    });
    status.replaceChildren("Finished. ", el("a", { href: "/projects/" + project, text: "See the services" }),
      " · ", el("a", { href: "/history/" + id, text: "this deployment" }));
    document.getElementById("preview").disabled = false;
  });
}

// ---- logs page ----

function initLogs() {
  const { project, service } = document.body.dataset;
  const pre = document.getElementById("log");
  const status = document.getElementById("log-status");
  let ctl = null;
  const MAX = 5000;
  async function start() {
    if (ctl) ctl.abort();
    ctl = new AbortController();
    const mine = ctl;
    pre.replaceChildren();
    const follow = document.getElementById("follow").checked;
    const tail = document.getElementById("tail").value;
    status.textContent = follow ? "Following…" : "Loading…";
    let resp;
    try {
      resp = await fetch("/services/" + encodeURIComponent(service) + "/logs?project=" + encodeURIComponent(project)
        + "&tail=" + tail + "&follow=" + follow, { credentials: "same-origin", signal: mine.signal });
    } catch (e) { if (!mine.signal.aborted) status.textContent = "Logs: " + e.message; return; }
    if (!resp.ok) { status.textContent = "Logs: " + await errorText(resp); return; }
    try {
      await readNdjson(resp, (l) => {
        if (l.error) { status.textContent = "Logs: " + l.error.message; return; }
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(el("span", { class: "ln s-" + l.stream, text: l.ts + " " + l.msg + "\n" }));
        while (pre.childNodes.length > MAX) pre.firstChild.remove();
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }, mine.signal);
      if (!mine.signal.aborted) status.textContent = follow ? "The stream ended." : pre.childNodes.length + " lines.";
    } catch (e) {
      if (!mine.signal.aborted) status.textContent = "Logs: " + e.message;
    }
  }
  document.getElementById("follow").addEventListener("change", start);
  document.getElementById("tail").addEventListener("change", start);
  document.getElementById("reload").addEventListener("click", start);
  window.addEventListener("pagehide", () => ctl && ctl.abort());
  start();
}

// ---- deployment page ----

function initDeployment() {
  const { id, running } = document.body.dataset;
  const table = document.getElementById("progress");
  async function refresh() {
    const resp = await fetch("/deployments/" + id, { credentials: "same-origin" });
    if (!resp.ok) return;
    const d = await resp.json();
    const progress = new Progress(table);
    for (const e of d.events || []) progress.event(e);
    if (d.report) progress.report(d.report);
    else for (const s of d.services || []) progress.row(s);
    if (running === "true") {
      if (d.status !== "running") location.reload();
      else setTimeout(refresh, 1500);
    }
  }
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "deploy") initDeploy();
  else if (page === "logs") initLogs();
  else if (page === "deployment") initDeployment();
});
