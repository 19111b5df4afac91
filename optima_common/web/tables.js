/* optima-federated report: tabs and interactive tables, no dependencies, works from file://. */
(function () {
  "use strict";
  var PAGE_SIZES = [25, 100, 500, 0];

  function cellText(td) { return (td.getAttribute("data-v") || td.textContent || "").trim(); }

  function sortKey(s) {
    var t = s.replace(/[≥<>,%\s]/g, "").replace(/\(.*$/, "");
    var x = parseFloat(t);
    return isNaN(x) || !/^[-+]?[\d.]+(e[-+]?\d+)?$/i.test(t) ? null : x;
  }

  function csvField(s) { return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }

  function download(name, text) {
    var blob = new Blob([text], {type: "text/csv;charset=utf-8"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 0);
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function enhance(table, index) {
    var thead = table.tHead, body = table.tBodies[0];
    if (!thead || !body) return;
    var headers = Array.prototype.map.call(thead.rows[thead.rows.length - 1].cells, function (c) { return c.textContent.trim(); });
    var rows = Array.prototype.slice.call(body.rows);
    var data = rows.map(function (r) { return Array.prototype.map.call(r.cells, cellText); });
    var state = {q: "", filters: {}, sortCol: -1, sortDir: 1, page: 0, size: rows.length > 25 ? 25 : 0};
    var name = (table.getAttribute("data-name") || ("table-" + (index + 1))).replace(/[^\w.-]+/g, "_");

    var bar = el("div", {"class": "tbar"});
    var search = el("input", {type: "search", placeholder: "search " + rows.length + " rows", "aria-label": "search table"});
    bar.appendChild(search);
    var selects = [];
    headers.forEach(function (h, j) {
      var vals = {};
      data.forEach(function (d) { vals[d[j]] = (vals[d[j]] || 0) + 1; });
      var keys = Object.keys(vals);
      if (keys.length < 2 || keys.length > 80 || keys.length === data.length) return;
      var s = el("select", {"aria-label": "filter " + h, "data-col": String(j)});
      s.appendChild(el("option", {value: ""}, h + ": all"));
      keys.sort().forEach(function (k) { s.appendChild(el("option", {value: k}, (k || "(blank)") + " (" + vals[k] + ")")); });
      s.addEventListener("change", function () {
        state.filters[j] = s.value; state.page = 0; draw();
        /* diagrams linked to this table redraw for the chosen cohort/site (diagrams.js) */
        document.dispatchEvent(new CustomEvent("tablefilter", {detail: {table: table.getAttribute("data-name") || "", column: h, value: s.value}}));
      });
      selects.push(s);
      bar.appendChild(s);
    });
    var size = el("select", {"aria-label": "rows per page"});
    PAGE_SIZES.forEach(function (n) {
      var o = el("option", {value: String(n)}, n ? n + " per page" : "all rows");
      if (n === state.size) o.selected = true;
      size.appendChild(o);
    });
    if (rows.length > 25) bar.appendChild(size);
    var dl = el("button", {type: "button", "class": "csv"}, "CSV");
    dl.title = "download the rows that match the search and filters";
    bar.appendChild(dl);
    var info = el("span", {"class": "tinfo"});
    var prev = el("button", {type: "button"}, "‹ prev"), next = el("button", {type: "button"}, "next ›");
    var pager = el("span", {"class": "pager"});
    pager.appendChild(prev); pager.appendChild(info); pager.appendChild(next);
    table.parentNode.insertBefore(bar, table);
    table.parentNode.insertBefore(pager, table.nextSibling);
    table.classList.add("itable");

    function matching() {
      var q = state.q.toLowerCase(), out = [];
      for (var i = 0; i < data.length; i++) {
        var ok = true;
        for (var j in state.filters) if (state.filters[j] !== "" && data[i][j] !== state.filters[j]) { ok = false; break; }
        if (ok && q) ok = data[i].join("\u0001").toLowerCase().indexOf(q) >= 0;
        if (ok) out.push(i);
      }
      if (state.sortCol >= 0) {
        var c = state.sortCol, d = state.sortDir;
        out.sort(function (a, b) {
          var x = data[a][c], y = data[b][c], kx = sortKey(x), ky = sortKey(y);
          if (kx !== null && ky !== null) return (kx - ky) * d || a - b;
          if (kx !== null) return -d;
          if (ky !== null) return d;
          return x.localeCompare(y) * d || a - b;
        });
      }
      return out;
    }

    function draw() {
      var idx = matching(), n = idx.length, sz = state.size || n || 1;
      var pages = Math.max(1, Math.ceil(n / sz));
      if (state.page >= pages) state.page = pages - 1;
      var from = state.page * sz, to = Math.min(n, from + sz);
      var frag = document.createDocumentFragment();
      for (var k = from; k < to; k++) frag.appendChild(rows[idx[k]]);
      while (body.firstChild) body.removeChild(body.firstChild);
      body.appendChild(frag);
      info.textContent = n ? ("rows " + (from + 1) + "–" + to + " of " + n + (n < data.length ? " (filtered from " + data.length + ")" : "")) : ("no rows match (of " + data.length + ")");
      prev.disabled = state.page === 0;
      next.disabled = state.page >= pages - 1;
      pager.style.display = (data.length > 25 || n < data.length) ? "" : "none";
      table.setAttribute("data-shown", String(to - from));
      table.setAttribute("data-matching", String(n));
    }

    ["input", "search", "change"].forEach(function (ev) {
      search.addEventListener(ev, function () { if (state.q !== search.value) { state.q = search.value; state.page = 0; draw(); } });
    });
    size.addEventListener("change", function () { state.size = parseInt(size.value, 10); state.page = 0; draw(); });
    prev.addEventListener("click", function () { state.page--; draw(); });
    next.addEventListener("click", function () { state.page++; draw(); });
    Array.prototype.forEach.call(thead.rows[thead.rows.length - 1].cells, function (th, j) {
      th.classList.add("sortable");
      th.title = "sort";
      th.addEventListener("click", function () {
        state.sortDir = state.sortCol === j ? -state.sortDir : 1;
        state.sortCol = j;
        Array.prototype.forEach.call(th.parentNode.cells, function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
        draw();
      });
    });
    dl.addEventListener("click", function () {
      var lines = [headers.map(csvField).join(",")];
      matching().forEach(function (i) { lines.push(data[i].map(csvField).join(",")); });
      download(name + ".csv", lines.join("\n") + "\n");
    });
    draw();
  }

  function tabs() {
    var panels = Array.prototype.slice.call(document.querySelectorAll("section.panel"));
    if (!panels.length) return;
    var nav = document.getElementById("tabs");
    var buttons = panels.map(function (p) {
      var b = el("button", {type: "button", role: "tab", "aria-controls": p.id, "data-tab": p.id},
                 p.getAttribute("data-title") || (p.querySelector("h2") || {}).textContent || p.id);
      b.addEventListener("click", function () { show(p.id, true); });
      nav.appendChild(b);
      return b;
    });
    function show(id, push) {
      panels.forEach(function (p) { p.hidden = p.id !== id; });
      buttons.forEach(function (b) { b.setAttribute("aria-selected", String(b.getAttribute("data-tab") === id)); });
      if (push && history.replaceState) history.replaceState(null, "", "#" + id);
    }
    var want = (location.hash || "").slice(1);
    show(panels.some(function (p) { return p.id === want; }) ? want : panels[0].id, false);
  }

  function init() {
    tabs();
    Array.prototype.forEach.call(document.querySelectorAll("table:not(.plain)"), enhance);
    document.body.setAttribute("data-ready", "1");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
