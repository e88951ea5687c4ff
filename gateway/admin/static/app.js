// The dashboard (gateway/admin/dashboard.py): polls the admin API with the operator's token and
// writes every value as text (textContent), never as markup.
"use strict";

const KEY = "peel-admin-token";
const EVERY_MS = 5000;
let timer = null;

function $(id) { return document.getElementById(id); }

function takeFragmentToken() {
  // `/dashboard#token=...`: the fragment never reaches a server; keep it in this tab, drop it from
  // the address bar and the history
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function pct(share) { return (share * 100).toFixed(1) + "%"; }

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

class Unauthorized extends Error {}

async function api(path) {
  const token = sessionStorage.getItem(KEY);
  if (!token) throw new Unauthorized("no token yet");
  const answer = await fetch(path, {headers: {"Authorization": "Bearer " + token}, cache: "no-store"});
  if (answer.status === 401 || answer.status === 403) {
    let detail = answer.status === 401 ? "the token was refused" : "the token lacks the read scope";
    try { detail = (await answer.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Unauthorized(detail);
  }
  if (!answer.ok) throw new Error(path + ": HTTP " + answer.status);
  return answer.json();
}

function guardText(guard) {
  if (!guard) return "-";
  const head = guard.frozen ? "frozen" : guard.action;
  return guard.reason ? head + ": " + guard.reason : head;
}

function shadowText(report) {
  if (!report) return "-";
  if (!report.pairs) return "no pairs compared yet";
  const [low, high] = report.interval;
  return pct(report.mismatch_rate) + " differ of " + report.pairs + " pairs (" + pct(low) + "–" + pct(high) +
    "), " + report.regressions + " regression(s)";
}

function addAlert(route, text) {
  const p = document.createElement("p");
  p.className = "alert";
  p.dataset.route = route;
  p.textContent = text;
  $("alerts").appendChild(p);
}

function renderMigrations(migrations, shadows) {
  const body = $("migrations").querySelector("tbody");
  body.replaceChildren();
  $("alerts").replaceChildren();
  $("no-migrations").hidden = migrations.length > 0;
  $("migrations").hidden = migrations.length === 0;
  for (const m of migrations) {
    const counts = m.counts;
    const served = counts.to + counts.from;
    const row = document.createElement("tr");
    row.dataset.route = m.route;
    cell(row, m.route, "route");
    cell(row, m.from + " → " + m.to);
    cell(row, m.stage + (m.stage === "canary" ? " " + m.percent + "%" : ""), "stage");
    const legacy = cell(row, served ? pct(counts.from / served) : "-", "legacy");
    if (served) {
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = (100 * counts.from / served).toFixed(1) + "%";
      legacy.prepend(bar);
    }
    cell(row, String(served), "requests");
    cell(row, String(counts.fallback), "fallbacks");
    cell(row, guardText(m.guard), "guard");
    const shadow = shadows[m.route];
    cell(row, m.stage === "shadow" ? shadowText(shadow) : "-", "shadow");
    const since = m.since;
    cell(row, since ? when(since.time) + " by " + since.actor + (since.reason ? " (" + since.reason + ")" : "")
                    : "-");
    body.appendChild(row);
    if (m.stage === "retired" && counts.retired_misses > 0) {
      addAlert(m.route, "Route " + m.route + " is retired, yet " + counts.retired_misses + " request(s) " +
        "failed on " + m.to + " that " + m.from + " would have answered (retired misses since " +
        when(since && since.time) + ").");
    }
    if (m.stage === "shadow" && shadow && shadow.regressions > 0) {
      const fields = shadow.fields.filter((f) => f.verdict === "regression").map((f) => f.field);
      addAlert(m.route, "The shadow of " + m.route + " finds " + shadow.regressions + " field(s) where " + m.to +
        " answers differently from " + m.from + " beyond the noise: " + fields.join(", ") +
        " (peel shadow report " + m.route + ").");
    }
    if (m.guard && m.guard.action === "rollback") {
      addAlert(m.route, "The guard of " + m.route + " rolls back: " + (m.guard.reason || m.guard.rule || ""));
    }
  }
}

function renderVersions(versions) {
  const body = $("versions").querySelector("tbody");
  body.replaceChildren();
  for (const v of versions) {
    const row = document.createElement("tr");
    cell(row, String(v.version));
    cell(row, when(v.created_at));
    cell(row, v.actor);
    cell(row, v.summary || "");
    cell(row, v.reason || "");
    body.appendChild(row);
  }
}

function showLogin(message) {
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  $("state").textContent = "needs an admin token";
}

async function refresh() {
  clearTimeout(timer);
  try {
    const [migrations, history] = await Promise.all([api("/api/v1/migrations"),
                                                     api("/api/v1/config/versions?limit=10")]);
    // the shadow stage's comparison, for the migrations in it (counted since that transition)
    const shadows = {};
    await Promise.all(migrations.migrations.filter((m) => m.stage === "shadow").map(async (m) => {
      shadows[m.route] = (await api("/api/v1/migrations/" + encodeURIComponent(m.route) +
                                    "/shadow?top=10&examples=0")).shadow;
    }));
    renderMigrations(migrations.migrations, shadows);
    renderVersions(history.versions);
    $("login").hidden = true;
    $("board").hidden = false;
    $("state").textContent = "config version " + migrations.version + " · updated " +
      new Date().toISOString().slice(11, 19) + " UTC";
    document.body.dataset.version = String(migrations.version);
  } catch (error) {
    if (error instanceof Unauthorized) {
      showLogin(sessionStorage.getItem(KEY) ? error.message : "");
      return;  // no polling without a token that works
    }
    $("state").textContent = "the admin API did not answer (" + error.message + "); retrying";
  }
  timer = setTimeout(refresh, EVERY_MS);
}

function start() {
  takeFragmentToken();
  $("use-token").addEventListener("click", () => {
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    $("token").value = "";
    refresh();
  });
  $("token").addEventListener("keydown", (event) => { if (event.key === "Enter") $("use-token").click(); });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    clearTimeout(timer);
    showLogin("");
  });
  refresh();
}

document.addEventListener("DOMContentLoaded", start);
