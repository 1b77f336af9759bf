// The browse page: search, filters, a thumbnail grid, image detail, shards and duplicates.
// Plain DOM, no external scripts; every value from the API goes in through textContent.
"use strict";
(() => {
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") node.textContent = v; else if (k === "on") Object.entries(v).forEach(([e, f]) => node.addEventListener(e, f));
      else if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    children.flat().forEach((c) => c !== null && c !== undefined && node.append(c));
    return node;
  };
  const grid = $("#grid"), view = $("#view"), more = $("#more"), status = $("#status"), form = $("#search");
  let nextPage = null;

  async function api(path, init) {
    const response = await fetch(path, { credentials: "same-origin", ...init });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
      throw new Error(`${response.status}: ${detail || response.statusText}`);
    }
    return body;
  }

  const FILTERS = ["shard", "camera_make", "camera_model", "captured_from", "captured_to", "country", "place", "tag",
                   "orientation", "has_duplicates", "ef_search"];
  function filterParams() {
    const params = new URLSearchParams(), data = new FormData(form);
    for (const name of FILTERS) { const v = (data.get(name) || "").trim(); if (v) params.set(name, v); }
    if (data.get("use_colour")) params.set("colour", data.get("colour"));
    return params;
  }
  function fillForm(params) {
    form.q.value = params.get("q") || "";
    for (const name of FILTERS) if (form[name]) form[name].value = params.get(name) || "";
    form.use_colour.checked = params.has("colour");
    if (params.has("colour")) form.colour.value = params.get("colour");
  }

  function card(item) {
    const box = el("a", { class: "card", href: `/image/${item.image_id}`, "data-id": item.image_id, "data-nav": "" });
    if (item.thumbhash) {
      try { const ph = window.thumbHashCanvas(item.thumbhash); ph.className = "placeholder"; box.append(ph); } catch (e) { /* bad hash: no placeholder */ }
    }
    if (item.thumbnail) {
      const img = el("img", { src: item.thumbnail, alt: item.caption || "", loading: "lazy", class: "thumb" });
      img.addEventListener("load", () => box.classList.add("loaded"));
      box.append(img);
    } else box.append(el("span", { class: "missing", text: "no thumbnail yet" }));
    const label = [item.caption, item.place_city, item.place_country].filter(Boolean).join(" · ");
    if (label) box.append(el("span", { class: "label", text: label }));
    return box;
  }

  async function fill(fetchPage, title) {
    grid.replaceChildren(); more.hidden = true; status.textContent = "Loading…";
    const load = async (cursor) => {
      const page = await fetchPage(cursor);
      page.items.forEach((item) => grid.append(card(item)));
      nextPage = page.next_cursor ? () => load(page.next_cursor) : null;
      more.hidden = !nextPage;
      status.textContent = `${title}: ${grid.children.length} image(s)` + (page.model ? ` · model ${page.model}` : "");
    };
    try { await load(null); } catch (e) { status.textContent = e.message; }
  }
  const withCursor = (params, cursor) => { const p = new URLSearchParams(params); if (cursor) p.set("cursor", cursor); return p; };

  function searchView(params) {
    view.replaceChildren(); fillForm(params);
    const filters = filterParams();
    if (params.get("like")) {
      const id = params.get("like");
      view.append(el("p", {}, "More like ", el("a", { href: `/image/${id}`, "data-nav": "", text: id.slice(0, 8) })));
      return fill((c) => api(`/api/images/${encodeURIComponent(id)}/similar?${withCursor(filters, c)}`), "Similar");
    }
    if (params.get("q")) {
      filters.set("q", params.get("q"));
      return fill((c) => api(`/api/search?${withCursor(filters, c)}`), `“${params.get("q")}”`);
    }
    return fill((c) => api(`/api/images?${withCursor(filters, c)}`), "Newest");
  }

  function table(rows) {
    return el("table", {}, rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v }))));
  }

  async function detailView(id) {
    grid.replaceChildren(); more.hidden = true; view.replaceChildren(); status.textContent = "Loading…";
    let d;
    try { d = await api(`/api/images/${encodeURIComponent(id)}`); } catch (e) { status.textContent = e.message; return; }
    status.textContent = "";
    const exif = Object.entries(d.exif_data || {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]);
    const place = [d.place_city, d.place_region, d.place_country].filter(Boolean).join(", ");
    const swatches = (d.palette || []).map((p) => el("span", { class: "swatch", title: `${p.hex} ${Math.round(100 * (p.share || 0))}%`, style: `background:${/^#[0-9a-fA-F]{6}$/.test(p.hex) ? p.hex : "#000"}` }));
    const dupes = d.duplicates ? d.duplicates.members.filter((m) => m.image_id !== d.image_id) : [];
    view.append(el("article", { class: "detail" },
      el("div", { class: "preview" }, d.preview || d.thumbnail ? el("img", { src: d.preview || d.thumbnail, alt: d.caption || "", id: "preview" }) : el("p", { text: "no preview yet" })),
      el("div", { class: "facts" },
        el("h2", { text: d.caption || d.image_id }),
        el("button", { id: "like", type: "button", on: { click: () => go(`/?like=${d.image_id}`) } }, "More like this"),
        table([["id", d.image_id], ["size", `${d.width}×${d.height} ${d.format}, ${d.bytes.toLocaleString()} bytes`],
               ["captured", d.captured_at ? `${d.captured_at} (${d.captured_at_source || "EXIF"})` : "unknown"],
               ["place", place || (d.latitude != null ? `${d.latitude}, ${d.longitude}` : "unknown")],
               ["paths", d.paths.map((p) => `${p.path} [${p.shard}, ${p.status}]`).join("\n")],
               ["models", d.models.join(", ") || "no vectors yet"]]),
        el("h3", { text: "Palette" }), el("div", { class: "palette" }, swatches),
        el("h3", { text: "Tags" }), el("ul", { class: "tags" }, d.tags.map((t) => el("li", { text: `${t.tag} ${t.confidence.toFixed(2)}` }))),
        el("h3", { text: `Duplicates${d.duplicates ? ` (group ${d.duplicates.group_id})` : ""}` }),
        dupes.length ? el("div", { class: "grid small" }, dupes.map(card)) : el("p", { text: "none" }),
        el("h3", { text: "EXIF" }), exif.length ? table(exif) : el("p", { text: "no EXIF" }))));
  }

  async function shardsView() {
    view.replaceChildren(); grid.replaceChildren(); more.hidden = true;
    try {
      const page = await api("/api/shards?limit=100");
      view.append(el("table", { class: "shards" }, el("tr", {}, ["shard", "paths", "failed", "statuses"].map((h) => el("th", { text: h }))),
        page.items.map((s) => el("tr", {}, el("td", {}, el("a", { href: `/shard/${encodeURIComponent(s.shard)}`, "data-nav": "", text: s.shard })),
          el("td", { text: s.paths }), el("td", { text: s.failed }),
          el("td", { text: Object.entries(s.counts).map(([k, v]) => `${k} ${v}`).join(", ") })))));
      status.textContent = `${page.items.length} shard(s)`;
    } catch (e) { status.textContent = e.message; }
  }

  async function shardView(key) {
    view.replaceChildren();
    try {
      const s = await api(`/api/shards/${encodeURIComponent(key)}`);
      const failures = s.failed ? (await api(`/api/shards/${encodeURIComponent(key)}/failures?limit=100`)).items : [];
      view.append(el("h2", { text: `Shard ${s.shard}` }),
        el("p", { text: Object.entries(s.counts).map(([k, v]) => `${k}: ${v}`).join(" · ") }),
        failures.length ? table(failures.map((f) => [f.path, `${f.error_kind}: ${f.error_message}`])) : "");
    } catch (e) { status.textContent = e.message; return; }
    const params = new URLSearchParams({ shard: key });
    await fill((c) => api(`/api/images?${withCursor(params, c)}`), `Shard ${key}`);
  }

  async function duplicatesView() {
    view.replaceChildren(); grid.replaceChildren(); more.hidden = true;
    try {
      const page = await api("/api/duplicates?limit=50");
      page.items.forEach((g) => view.append(el("h3", { text: `Group ${g.group_id}` }), el("div", { class: "grid small" }, g.members.map(card))));
      status.textContent = `${page.items.length} group(s)`;
    } catch (e) { status.textContent = e.message; }
  }

  function route() {
    const path = location.pathname, params = new URLSearchParams(location.search);
    if (path.startsWith("/image/")) return detailView(decodeURIComponent(path.slice(7)));
    if (path.startsWith("/shard/")) return shardView(decodeURIComponent(path.slice(7)));
    if (path === "/shards") return shardsView();
    if (path === "/duplicates") return duplicatesView();
    return searchView(params);
  }
  function go(url) { history.pushState(null, "", url); route(); window.scrollTo(0, 0); }

  document.addEventListener("click", (e) => {
    const link = e.target.closest("a[data-nav]");
    if (link && !e.ctrlKey && !e.metaKey && e.button === 0) { e.preventDefault(); go(link.getAttribute("href")); }
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = filterParams(), q = form.q.value.trim();
    if (q) params.set("q", q);
    go(`/?${params}`);
  });
  $("#upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    view.replaceChildren(el("p", { text: `Like the uploaded ${file.name} (not stored)` }));
    const body = new FormData(); body.append("file", file);
    await fill(() => api(`/api/search/image?${filterParams()}`, { method: "POST", body }), "Like the upload");
    e.target.value = "";
  });
  more.addEventListener("click", () => nextPage && nextPage());
  window.addEventListener("popstate", route);
  route();
})();
