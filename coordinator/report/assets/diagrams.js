/* optima-federated report: diagrams drawn as SVG from the JSON the page carries (no library, offline).
   Sankey of treatment pathways, attrition flow, two-cohort Venn. A cell is {n, t, k}: k "" visible,
   "sup" suppressed at the site (<5), "lb" pooled lower bound (≥), "all" suppressed at every site.
   A suppressed cell is drawn as a thin dashed shape labelled with its text, never as 0. */
(function () {
  "use strict";
  /* the SVG namespace: an identifier, never fetched (written in two parts so the page holds no URL) */
  var NS = "http:" + "//www.w3.org/2000/svg";
  var COLORS = ["#2b6ca3", "#d08b2c", "#3f8f5a", "#a3485a", "#6b5ca5", "#3a8f99", "#8a6d3b", "#c05a9a"];

  function s(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function h(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function tip(node, text) { node.appendChild(s("title", {}, text)); return node; }
  function cls(c) { return c && c.k ? "c-" + c.k : ""; }
  function txt(c) { return c ? c.t : "not released"; }
  function cut(t, n) { return t.length > n ? t.slice(0, n - 1) + "…" : t; }

  /* ---- Sankey: cohort -> line 1 -> line 2 ... ---- */
  function sankey(svg, d, group) {
    var seqs = d.seq, W = 1150, H = 440, top = 24, nodeW = 14, gap = 10;
    var cols = [], nodes = {}, links = {}, maxCol = 0;
    function node(col, name) {
      var id = col + "|" + name;
      if (!nodes[id]) { nodes[id] = {id: id, col: col, name: name, v: 0, sup: 0, lb: false, out: 0, inn: 0}; (cols[col] = cols[col] || []).push(nodes[id]); }
      return nodes[id];
    }
    var root = node(0, group);
    seqs.forEach(function (q) {
      var lines = q.path.split("-"), prev = root;
      maxCol = Math.max(maxCol, lines.length);
      [root].concat(lines.map(function (l, i) { return node(i + 1, l); })).forEach(function (nd, i, all) {
        if (q.n !== null) { nd.v += q.n; } else { nd.sup += 1; }
        if (q.k === "lb") nd.lb = true;
        if (i === 0) return;
        var key = prev.id + ">" + nd.id;
        var L = links[key] = links[key] || {a: prev, b: nd, v: 0, sup: 0, texts: []};
        if (q.n !== null) L.v += q.n; else L.sup += 1;
        L.texts.push(q.path + ": " + q.t);
        prev = all[i];
      });
    });
    var scale = Infinity;
    cols.forEach(function (c) {
      var tot = c.reduce(function (a, n) { return a + n.v; }, 0);
      if (tot > 0) scale = Math.min(scale, (H - top - 10 - gap * (c.length - 1) - 4 * c.length) / tot);
    });
    if (!isFinite(scale)) scale = 1;
    var colX = function (c) { return 10 + c * (W - 350) / Math.max(1, maxCol); };
    cols.forEach(function (c) {
      c.sort(function (x, y) { return y.v - x.v || y.sup - x.sup; });
      var y = top;
      c.forEach(function (n) { n.h = Math.max(4, n.v * scale); n.y = y; n.x = colX(n.col); y += n.h + gap; });
    });
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    for (var c = 1; c <= maxCol; c++) svg.appendChild(s("text", {x: colX(c), y: 14, "class": "axis"}, "line " + c));
    Object.keys(links).map(function (k) { return links[k]; }).sort(function (x, y) { return y.v - x.v; }).forEach(function (L) {
      var t = Math.max(L.v * scale, 0), x0 = L.a.x + nodeW, x1 = L.b.x, xm = (x0 + x1) / 2;
      var y0 = L.a.y + L.a.out, y1 = L.b.y + L.b.inn, p;
      if (t > 0) {
        p = s("path", {d: "M" + x0 + "," + y0 + "C" + xm + "," + y0 + " " + xm + "," + y1 + " " + x1 + "," + y1 +
          "L" + x1 + "," + (y1 + t) + "C" + xm + "," + (y1 + t) + " " + xm + "," + (y0 + t) + " " + x0 + "," + (y0 + t) + "Z",
          "class": "link" + (L.sup ? " has-sup" : ""), fill: COLORS[(L.b.col + cols[L.b.col].indexOf(L.b)) % COLORS.length]});
      } else {
        t = 2;
        p = s("path", {d: "M" + x0 + "," + (y0 + 1) + "C" + xm + "," + (y0 + 1) + " " + xm + "," + (y1 + 1) + " " + x1 + "," + (y1 + 1),
          "class": "link sup-link"});
      }
      L.a.out += t; L.b.inn += t;
      svg.appendChild(tip(p, L.a.name + " → " + L.b.name + "\n" + L.texts.join("\n")));
    });
    Object.keys(nodes).forEach(function (k) {
      var n = nodes[k], g = s("g", {"class": "node"});
      g.appendChild(s("rect", {x: n.x, y: n.y, width: nodeW, height: n.h, "class": n.v > 0 ? "" : "sup-node"}));
      var label = n.col === 0 && d.total ? d.total.t : (n.v > 0 ? (n.lb || n.sup ? "≥" : "") + n.v.toLocaleString("en") : "<" + (d.mcc || 5));
      if (n.sup && n.v > 0) label += " + " + n.sup + (n.sup > 1 ? " sequences" : " sequence") + " <" + (d.mcc || 5);
      var t = s("text", {x: n.x + nodeW + 4, y: n.y + Math.min(n.h / 2, 12) + 4, "class": n.v > 0 ? (n.lb || n.sup ? "c-lb" : "") : "c-sup"},
                cut(n.name, 38) + "  " + label);
      g.appendChild(t);
      svg.appendChild(tip(g, n.name + (n.col ? " (line " + n.col + ")" : " (cohort)") + ": " + label));
    });
  }

  /* ---- attrition flow: boxes down, excluded to the right ---- */
  function attrition(svg, steps) {
    var bw = 520, bh = 46, vgap = 42, x = 20, ex = x + bw + 90, ew = 300;
    var H = steps.length * (bh + vgap) + 10;
    svg.setAttribute("viewBox", "0 0 " + (ex + ew + 20) + " " + H);
    var defs = s("defs");
    var m = s("marker", {id: "arr", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto"});
    m.appendChild(s("path", {d: "M0,0L10,5L0,10z", fill: "#567"}));
    defs.appendChild(m); svg.appendChild(defs);
    steps.forEach(function (st, i) {
      var y = 5 + i * (bh + vgap), g = s("g", {"class": "step"});
      g.appendChild(s("rect", {x: x, y: y, width: bw, height: bh, rx: 4, "class": "box"}));
      g.appendChild(s("text", {x: x + 10, y: y + 18}, cut((i + 1) + ". " + st.reason, 70)));
      g.appendChild(s("text", {x: x + 10, y: y + 37, "class": "n " + cls(st.left)}, "subjects: " + txt(st.left)));
      svg.appendChild(tip(g, st.reason + "\nsubjects left: " + txt(st.left) + "\nexcluded: " + txt(st.excl)));
      if (i === 0) return;
      var ya = y - vgap, mid = y - vgap / 2;
      svg.appendChild(s("line", {x1: x + bw / 2, y1: ya, x2: x + bw / 2, y2: y - 1, "class": "arrow", "marker-end": "url(#arr)"}));
      if (st.excl && !(st.excl.n === 0 && st.excl.k === "")) {
        svg.appendChild(s("line", {x1: x + bw / 2, y1: mid, x2: ex - 2, y2: mid, "class": "arrow", "marker-end": "url(#arr)"}));
        var eg = s("g", {"class": "excl"});
        eg.appendChild(s("rect", {x: ex, y: mid - 14, width: ew, height: 28, rx: 4, "class": "xbox"}));
        eg.appendChild(s("text", {x: ex + 8, y: mid + 5, "class": cls(st.excl)}, "excluded: " + txt(st.excl)));
        svg.appendChild(tip(eg, st.reason + ": excluded " + txt(st.excl)));
      }
    });
  }

  /* ---- Venn of two cohorts ---- */
  function venn(svg, d) {
    var W = 760, H = 330, cy = 175;
    var a = d.a, b = d.b, ab = d.ab;
    var vis = [a, b, ab].every(function (c) { return c && c.n !== null; });
    var ta = vis ? a.n + ab.n : 1, tb = vis ? b.n + ab.n : 1, big = Math.max(ta, tb, 1);
    var ra = vis ? Math.max(40, 130 * Math.sqrt(ta / big)) : 110, rb = vis ? Math.max(40, 130 * Math.sqrt(tb / big)) : 110;
    var f = vis && Math.min(ta, tb) > 0 ? ab.n / Math.min(ta, tb) : 0.35;
    var dist = Math.max(Math.abs(ra - rb) + 12, ra + rb - 2 * Math.min(ra, rb) * f);
    var cxa = W / 2 - dist / 2, cxb = W / 2 + dist / 2;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.appendChild(s("circle", {cx: cxa, cy: cy, r: ra, "class": "set-a"}));
    svg.appendChild(s("circle", {cx: cxb, cy: cy, r: rb, "class": "set-b"}));
    var ny = cy - Math.max(ra, rb) - 10;
    svg.appendChild(s("text", {x: cxa, y: ny, "text-anchor": "end", "class": "setname"}, cut(d.names[0], 40)));
    svg.appendChild(s("text", {x: cxb, y: ny, "text-anchor": "start", "class": "setname"}, cut(d.names[1], 40)));
    var lx = Math.min(cxa - ra / 2, (cxa - ra + cxb - rb) / 2 + 10), rx = Math.max(cxb + rb / 2, (cxa + ra + cxb + rb) / 2 - 10);
    [[lx, a, "only in " + d.names[0]], [(cxa + ra + cxb - rb) / 2, ab, "in both"], [rx, b, "only in " + d.names[1]]].forEach(function (p) {
      var t = s("text", {x: p[0], y: cy + 5, "text-anchor": "middle", "class": "n " + cls(p[1])}, txt(p[1]));
      svg.appendChild(tip(t, p[2] + ": " + txt(p[1])));
    });
    if (!vis) svg.appendChild(s("text", {x: 10, y: H - 8, "class": "c-sup"}, "circles not to scale: a part is suppressed"));
  }

  var DRAW = {sankey: sankey, attrition: attrition, venn: venn};

  function setup(div) {
    var data = JSON.parse(div.querySelector("script[type='application/json']").textContent);
    var kind = div.getAttribute("data-kind"), groups = Object.keys(data.groups);
    if (!groups.length || !DRAW[kind]) return;
    var bar = h("div", {"class": "dbar"});
    bar.appendChild(h("b", {}, div.getAttribute("data-title")));
    var site = h("select", {"aria-label": "diagram site", "class": "dsite"});
    data.sites.forEach(function (x) { site.appendChild(h("option", {value: x}, x)); });
    site.value = data.sites[data.sites.length - 1];
    var grp = h("select", {"aria-label": "diagram " + (div.getAttribute("data-cohort-label") || "group"), "class": "dgroup"});
    groups.forEach(function (x) { grp.appendChild(h("option", {value: x}, x)); });
    bar.appendChild(h("span", {}, " site "));
    bar.appendChild(site);
    if (groups.length > 1) { bar.appendChild(h("span", {}, " · ")); bar.appendChild(grp); }
    var holder = h("div", {"class": "dsvg"});
    div.appendChild(bar);
    div.appendChild(holder);
    function draw() {
      while (holder.firstChild) holder.removeChild(holder.firstChild);
      var svg = s("svg", {role: "img", "aria-label": kind + " " + grp.value + " " + site.value, "data-site": site.value,
                          "data-group": grp.value, "class": "d-" + kind});
      var d = data.groups[grp.value][site.value];
      if (!d) {
        holder.appendChild(h("p", {"class": "c-sup"}, site.value + " released nothing for " + grp.value));
      } else {
        DRAW[kind](svg, d, grp.value);
        holder.appendChild(svg);
      }
      div.setAttribute("data-drawn", String(+(div.getAttribute("data-drawn") || 0) + 1));
    }
    site.addEventListener("change", draw);
    grp.addEventListener("change", draw);
    /* the linked table's filters: its cohort column picks the group, a site filter the site */
    document.addEventListener("tablefilter", function (e) {
      var x = e.detail || {};
      if (x.table !== div.getAttribute("data-table")) return;
      if (x.column === div.getAttribute("data-cohort-label") && data.groups[x.value]) { grp.value = x.value; draw(); }
      else if (/^(site|cdm_name)$/.test(x.column) && data.sites.indexOf(x.value) >= 0) { site.value = x.value; draw(); }
    });
    draw();
  }

  function init() { Array.prototype.forEach.call(document.querySelectorAll("div.diagram"), setup); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
