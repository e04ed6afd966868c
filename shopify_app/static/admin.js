// The embedded admin's shared helpers: API calls with App Bridge session tokens, banners, charts.
(() => {
  // The session token came in the URL for this load only: keep it out of bookmarks and reloads.
  const url = new URL(location.href);
  if (url.searchParams.has("id_token")) {
    url.searchParams.delete("id_token");
    history.replaceState(null, "", url);
  }
  if (window.shopify && shopify.environment && shopify.environment.embedded) {
    document.documentElement.classList.add("in-admin"); // the admin shows ui-nav-menu: no tabs of our own
  }

  // The page is inert until every script on it has run (DOMContentLoaded comes after them) and so wired its
  // buttons: a click before then would be lost.
  document.addEventListener("DOMContentLoaded", () => { document.getElementById("main").inert = false; });

  const banner = document.getElementById("banner");
  const status = document.getElementById("status");

  // `body` goes as JSON, `text` (a file's contents) as it is.
  async function api(path, { method = "GET", body, text } = {}) {
    const headers = { Authorization: `Bearer ${await shopify.idToken()}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (text !== undefined) headers["Content-Type"] = "text/plain";
    const response = await fetch(path, { method, headers, body: text ?? (body === undefined ? undefined : JSON.stringify(body)) });
    if (response.status === 204) return null;
    let json = null;
    try { json = await response.json(); } catch { /* not JSON: say so below */ }
    if (!response.ok) {
      const error = new Error((json && json.message) || `The request failed (${response.status}).`);
      error.status = response.status;
      throw error;
    }
    return json;
  }

  function say(message) {
    status.textContent = message;
    if (window.shopify && shopify.toast) shopify.toast.show(message);
  }

  function showError(message) {
    banner.textContent = message;
    banner.hidden = false;
    banner.focus && banner.scrollIntoView({ block: "nearest" });
  }

  // A button that calls the server: disabled while it works, errors as a banner (never a trace).
  function action(id, work) {
    const button = typeof id === "string" ? document.getElementById(id) : id;
    button.addEventListener("click", async (event) => {
      banner.hidden = true;
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      try {
        await work(event);
      } catch (error) {
        showError(error.message);
      } finally {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      }
    });
  }

  function badge(text) {
    const span = document.createElement("span");
    span.className = `badge badge-${text.replace(/[^a-z-]/g, "")}`;
    span.textContent = text;
    return span;
  }

  const charts = {};
  function chart(id, config) {
    if (!window.Chart) return null;
    if (charts[id]) charts[id].destroy();
    config.options = { responsive: true, maintainAspectRatio: false, animation: false, ...(config.options || {}) };
    charts[id] = new Chart(document.getElementById(id), config);
    return charts[id];
  }

  function lossChart(id, history) {
    const training = (history || []).filter((p) => p.loss != null);
    const held = (history || []).filter((p) => p.eval_loss != null);
    const box = document.getElementById(id).parentElement;
    let note = box.nextElementSibling?.classList.contains("loss-note") ? box.nextElementSibling : null;
    box.hidden = training.length < 2;
    if (box.hidden) { // one point is no curve: say what there is instead
      if (!note) { note = document.createElement("p"); note.className = "loss-note subdued"; box.after(note); }
      const last = training.at(-1), evaluated = held.at(-1);
      note.textContent = "Too few steps for a curve yet" + (last ? `: training loss ${last.loss.toFixed(3)} at step ${last.step}` : "")
        + (evaluated ? `, held-out loss ${evaluated.eval_loss.toFixed(3)}` : "") + ".";
      return null;
    }
    note?.remove();
    return chart(id, {
      type: "line",
      data: {
        datasets: [
          { label: "training loss", data: training.map((p) => ({ x: p.step, y: p.loss })),
            borderColor: "#008060", pointRadius: training.length < 20 ? 2 : 0 },
          { label: "evaluation loss", data: held.map((p) => ({ x: p.step, y: p.eval_loss })),
            borderColor: "#d72c0d", showLine: false, pointRadius: 4 },
        ],
      },
      options: { scales: { x: { type: "linear", title: { display: true, text: "step" } },
                           y: { title: { display: true, text: "loss" } } } },
    });
  }

  // A table body of text cells, a row per item.
  function rows(tbody, items, cells) {
    tbody.replaceChildren(...items.map((item) => {
      const row = document.createElement("tr");
      for (const text of cells(item)) row.insertCell().textContent = text;
      return row;
    }));
  }

  // A report the admin starts (`/api/evaluations/<kind>`): drawn now, polled while it runs, started by its button.
  function report(kind, buttonId, record, draw) {
    const url = `/api/evaluations/${kind}`;
    const show = (current) => {
      const busy = current.status === "running";
      document.getElementById(buttonId).disabled = busy;
      draw(current);
      if (busy) setTimeout(async () => show(await api(url)), 2000);
    };
    show(record);
    action(buttonId, async () => show(await api(url, { method: "POST" })));
  }

  const unfinished = (run) => run.status === "queued" || run.status === "running";
  const when = (iso) => new Date(iso).toLocaleString();
  const percent = (v) => (v == null ? "–" : `${(100 * v).toFixed(1)}%`);

  // Load this page again with fresh data (the bounce page fetches a new session token).
  function reload() { location.replace(location.href); }

  window.Pairwell = { api, say, showError, action, badge, chart, lossChart, rows, report, unfinished, when, percent,
                      reload };
})();
