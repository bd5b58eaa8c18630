// Flip explorer of report.html: filters, search and pages over the items in #flip-data.
// Item text is untrusted model output: it only ever reaches the page through
// textContent (never innerHTML), so it renders as inert text.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("flip-data").textContent);
  var TASKS = D.tasks, ITEMS = D.items, PAGE = 40;
  var GROUPS = D.groups || []; // [name, [task index, ...]]: a group filters on all its subtasks
  var FLAGS = {}; // each registered detector: name -> {label, badge}
  (D.flags || []).forEach(function (f) { FLAGS[f[0]] = { label: f[1], badge: f[2] }; });
  var CORRECT_AT = D.correct_at;
  var KIND = { neg: "negative flip", pos: "positive flip", chg: "changed" };
  function $(id) { return document.getElementById(id); }
  var ui = {
    task: $("f-task"), kind: $("f-kind"), cause: $("f-cause"), flags: document.querySelectorAll("input.f-flag"),
    q: $("f-q"),
    list: $("flip-list"),
    count: $("f-count"), prev: $("f-prev"), next: $("f-next"), page: $("f-page")
  };
  var st = { task: -1, group: null, kind: "", cause: "", flags: [], q: "", page: 0 };
  var shown = ITEMS;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(n) { return Number(n).toLocaleString("en-US"); }

  var perTask = TASKS.map(function () { return 0; });
  var perKind = { neg: 0, pos: 0, chg: 0 };
  ITEMS.forEach(function (it) { perTask[it.t] += 1; perKind[it.k] += 1; });
  GROUPS.forEach(function (g, i) {
    var n = 0;
    g[1].forEach(function (t) { n += perTask[t]; });
    var o = el("option", null, "group " + g[0] + " (" + fmt(n) + ")");
    o.value = "g" + i;
    ui.task.appendChild(o);
  });
  TASKS.forEach(function (name, i) {
    var o = el("option", null, name + " (" + fmt(perTask[i]) + ")");
    o.value = String(i);
    ui.task.appendChild(o);
  });
  var perCause = {}, causes = []; // why each negative flip was lost (harness/causes.py), in first-seen order
  ITEMS.forEach(function (it) {
    if (!it.cs) return;
    if (!perCause[it.cs]) { perCause[it.cs] = 0; causes.push(it.cs); }
    perCause[it.cs] += 1;
  });
  causes.forEach(function (name) {
    var o = el("option", null, name + " (" + fmt(perCause[name]) + ")");
    o.value = name;
    ui.cause.appendChild(o);
  });
  Array.prototype.forEach.call(ui.kind.options, function (o) {
    if (o.value) o.textContent += " (" + fmt(perKind[o.value] || 0) + ")";
  });

  function segText(segs) {
    var out = [];
    for (var i = 0; i < segs.length; i++) if (segs[i][0] < 2) out.push(segs[i][1]);
    return out.join("");
  }
  function haystack(it) {
    if (it._h === undefined) {
      it._h = [TASKS[it.t], it.id, segText(it.p), segText(it.g), segText(it.ab), segText(it.ac), segText(it.b), segText(it.c)]
        .join("\n").toLowerCase();
    }
    return it._h;
  }
  function match(it) {
    if (st.task >= 0 && it.t !== st.task) return false;
    if (st.group && !st.group[it.t]) return false;
    if (st.kind && it.k !== st.kind) return false;
    if (st.cause && it.cs !== st.cause) return false;
    for (var i = 0; i < st.flags.length; i++) if (it.dc.indexOf(st.flags[i]) < 0) return false;
    if (st.q && haystack(it).indexOf(st.q) < 0) return false;
    return true;
  }

  // Segments: [0, shared text], [1, text after the divergence], [2, n characters
  // omitted], [3, name, 0|1, count] (a run of a control or invalid character).
  function segs(parent, list, diverges) {
    var first = true;
    for (var i = 0; i < list.length; i++) {
      var s = list[i], inDiff = diverges && (s[0] === 1 || (s[0] === 3 && s[2] === 1));
      var cls = inDiff ? (first ? "dv dv0" : "dv") : "";
      if (inDiff) first = false;
      if (s[0] === 2) {
        parent.appendChild(el("span", "gap", "\u2026 " + fmt(s[1]) + " characters omitted \u2026"));
      } else if (s[0] === 3) {
        var c = el("span", "ctl " + cls, s[1] + (s[3] > 1 ? " \u00d7" + fmt(s[3]) : ""));
        c.title = "control or invalid character " + s[1];
        parent.appendChild(c);
      } else if (cls) {
        parent.appendChild(el("span", cls, s[1]));
      } else {
        parent.appendChild(document.createTextNode(s[1]));
      }
    }
    return !first;
  }

  function scoreMark(score) {
    if (score === null || score === undefined) return el("span", null, "");
    return score >= CORRECT_AT ? el("span", "ok", "\u2713 right") : el("span", "ko", "\u2717 wrong");
  }

  function pane(it, side) {
    var base = side === "b";
    var p = el("div", "pane " + side);
    var h = el("div", "pane-h");
    h.appendChild(el("span", "side", base ? "base" : "candidate"));
    h.appendChild(scoreMark(base ? it.sb : it.sc));
    if (it.m === "gen") {
      var fin = base ? it.fb : it.fc;
      h.appendChild(el("span", "fin-" + fin, "finish: " + (fin || "-")));
      h.appendChild(el("span", null, fmt(base ? it.nb : it.nc) + " tokens"));
    }
    var ans = base ? it.ab : it.ac;
    var a = el("span", null, "answer: ");
    var inl = el("span", "inl");
    if (ans.length) segs(inl, ans, false); else inl.textContent = "\u2205";
    a.appendChild(inl);
    h.appendChild(a);
    p.appendChild(h);
    var pre = el("pre", "out");
    var diverges = it.dv >= 0;
    var hadDiff = segs(pre, it[side], diverges);
    if (diverges && !hadDiff) pre.appendChild(el("span", "dv0 end", "\u27c2 ends here; the other output goes on"));
    if (!it[side].length && !diverges) pre.appendChild(el("span", "gap", "(empty output)"));
    p.appendChild(pre);
    if (!base && it.lp) p.appendChild(loopInfo(it.lp));
    if (base) {
      it.db.forEach(function (name) {
        p.appendChild(el("div", "loop", "base output flagged too: " + FLAGS[name].label));
      });
    }
    return p;
  }

  function loopInfo(lp) {
    var d = el("div", "loop");
    d.appendChild(el("span", "badge loop", "tail loop"));
    var unit = lp.u.replace(/\n/g, "\u21b5");
    if (lp.tok) d.appendChild(el("span", null, "unit (token ids):"));
    else d.appendChild(el("span", null, "unit of " + fmt(lp.ul) + " character" + (lp.ul === 1 ? "" : "s") + ":"));
    for (var i = 0; i < 3; i++) d.appendChild(el("span", "unit", unit));
    var tail = "\u2026";
    if (lp.r !== null) tail += " \u00d7 " + fmt(lp.r) + " repeats";
    if (lp.s !== null && lp.s >= 0 && !lp.tok) tail += ", from character " + fmt(lp.s) + " of " + fmt(lp.n);
    d.appendChild(el("span", null, tail + " (to the end of the output)"));
    return d;
  }

  function card(it) {
    var c = el("article", "flip " + it.k);
    c.setAttribute("data-task", TASKS[it.t]);
    c.setAttribute("data-kind", it.k);
    var h = el("div", "flip-h");
    h.appendChild(el("span", "badge " + it.k, KIND[it.k]));
    h.appendChild(el("span", "task", TASKS[it.t]));
    h.appendChild(el("span", "iid", "item " + it.id));
    if (it.cs) h.appendChild(el("span", "badge cause", "cause: " + it.cs));
    it.dc.forEach(function (name) { // flagged on the candidate, not on the base
      if (FLAGS[name].badge && it.db.indexOf(name) < 0) h.appendChild(el("span", "badge loop", FLAGS[name].badge));
    });
    if (it.dv < 0) h.appendChild(el("span", "badge", "outputs identical"));
    else h.appendChild(el("span", "badge", "diverge at character " + fmt(it.dv)));
    c.appendChild(h);
    var meta = el("div", "meta");
    meta.appendChild(el("span", "lbl", "reference answer: "));
    var tgt = el("span", "inl");
    segs(tgt, it.g, false);
    meta.appendChild(tgt);
    c.appendChild(meta);
    var det = el("details", "prompt");
    det.appendChild(el("summary", null, "prompt"));
    det.addEventListener("toggle", function once() {
      if (det.open && det.childNodes.length === 1) {
        var pre = el("pre", "prompt");
        segs(pre, it.p, false);
        det.appendChild(pre);
      }
    });
    c.appendChild(det);
    var panes = el("div", "panes");
    panes.appendChild(pane(it, "b"));
    panes.appendChild(pane(it, "c"));
    c.appendChild(panes);
    return c;
  }

  function draw() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    if (st.page >= pages) st.page = pages - 1;
    if (st.page < 0) st.page = 0;
    var frag = document.createDocumentFragment();
    var from = st.page * PAGE, to = Math.min(shown.length, from + PAGE);
    for (var i = from; i < to; i++) frag.appendChild(card(shown[i]));
    if (!shown.length) frag.appendChild(el("p", "empty", "No item matches these filters."));
    ui.list.replaceChildren(frag);
    ui.list.setAttribute("data-matches", String(shown.length));
    ui.count.textContent = shown.length
      ? "showing " + fmt(from + 1) + "\u2013" + fmt(to) + " of " + fmt(shown.length) + " items"
      : "0 of " + fmt(ITEMS.length) + " items";
    ui.page.textContent = "page " + fmt(st.page + 1) + " of " + fmt(pages);
    ui.prev.disabled = st.page === 0;
    ui.next.disabled = st.page >= pages - 1;
  }

  function apply() {
    var g = ui.task.value.charAt(0) === "g" ? GROUPS[parseInt(ui.task.value.slice(1), 10)] : null;
    st.group = null;
    if (g) {
      st.group = {};
      g[1].forEach(function (t) { st.group[t] = true; });
    }
    st.task = g ? -1 : parseInt(ui.task.value, 10);
    st.kind = ui.kind.value;
    st.cause = ui.cause.value;
    st.flags = [];
    Array.prototype.forEach.call(ui.flags, function (f) { if (f.checked) st.flags.push(f.getAttribute("data-flag")); });
    st.q = ui.q.value.trim().toLowerCase();
    shown = ITEMS.filter(match);
    st.page = 0;
    draw();
  }

  var timer = null;
  ui.task.addEventListener("change", apply);
  ui.kind.addEventListener("change", apply);
  ui.cause.addEventListener("change", apply);
  Array.prototype.forEach.call(ui.flags, function (f) { f.addEventListener("change", apply); });
  ui.q.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(apply, 150);
  });
  ui.prev.addEventListener("click", function () { st.page -= 1; draw(); ui.list.scrollIntoView(); });
  ui.next.addEventListener("click", function () { st.page += 1; draw(); ui.list.scrollIntoView(); });
  Array.prototype.forEach.call(document.querySelectorAll("a.task-link"), function (a) {
    a.addEventListener("click", function () {
      var name = a.getAttribute("data-task"), i = TASKS.indexOf(name);
      var gi = GROUPS.map(function (g) { return g[0]; }).indexOf(name);
      ui.task.value = i < 0 && gi >= 0 ? "g" + gi : String(i);
      apply();
    });
  });
  apply();
})();
