// cotforge report: tabs and the data viewer. Offline: no requests, no
// external code. Row text is hostile (seed text is user data): it only ever
// reaches the page through textContent and setAttribute, never as markup.
(function () {
  'use strict';
  var NS = 'http://www.w3.org/2000/svg';
  var dataEl = document.getElementById('viewer-data');
  var D = dataEl ? JSON.parse(dataEl.textContent) : null;
  var root = document.getElementById('viewer');
  document.body.classList.add('js');
  if (!D || !root) { return; }
  var byKey = {};
  D.rows.forEach(function (r) { byKey[r.key] = r; });

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function sv(tag, attrs) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }
  function clear(e) { while (e.firstChild) { e.removeChild(e.firstChild); } }
  function fmt(x, d) { return (x === null || x === undefined) ? '-' : Number(x).toFixed(d); }
  function confColor(c) {
    if (c === null || c === undefined) { return '#eeeeee'; }
    var h = Math.max(0, Math.min(1, c)) * 120;
    return 'hsl(' + h.toFixed(0) + ',75%,80%)';
  }
  function link(text, hash) {
    var a = el('a', null, text);
    a.setAttribute('href', '#' + hash);
    return a;
  }

  // ---- routing: #summary, #list[&filter=value...], #chain=KEY, #tree=KEY, #compare
  function parseHash() {
    var st = { view: 'summary' };
    var h = location.hash.replace(/^#/, '');
    h.split('&').forEach(function (p) {
      if (!p) { return; }
      var i = p.indexOf('=');
      var k = i < 0 ? p : p.slice(0, i);
      var v = i < 0 ? '' : decodeURIComponent(p.slice(i + 1));
      if (i < 0 && (k === 'summary' || k === 'list' || k === 'compare')) { st.view = k; }
      else if (k === 'chain' || k === 'tree') { st.view = k; st.key = v; }
      else { st[k] = v; }
    });
    return st;
  }
  function listHash(f) {
    var parts = ['list'];
    Object.keys(f).forEach(function (k) {
      if (f[k] !== '' && f[k] !== undefined) { parts.push(k + '=' + encodeURIComponent(f[k])); }
    });
    return parts.join('&');
  }

  function showTab(name) {
    document.querySelectorAll('.tab').forEach(function (t) {
      t.classList.toggle('active', t.id === 'tab-' + name);
    });
    document.querySelectorAll('nav#tabs a').forEach(function (a) {
      a.classList.toggle('active', a.getAttribute('data-tab') === name);
    });
  }

  // ---- list
  var FILTERS = ['status', 'recipe', 'verified', 'reason', 'rmin', 'rmax', 'q'];
  var extraCols = (function () {
    var seen = {};
    D.rows.forEach(function (r) {
      Object.keys(r.extra || {}).forEach(function (k) {
        var v = r.extra[k];
        if (typeof v === 'boolean' || typeof v === 'number') { seen[k] = true; }
      });
    });
    return Object.keys(seen).sort().slice(0, 4);
  })();
  function distinct(f) {
    var s = {};
    D.rows.forEach(function (r) { var v = f(r); if (v) { s[v] = true; } });
    return Object.keys(s).sort();
  }
  function verifiedName(v) { return v === true ? 'true' : (v === false ? 'false' : 'none'); }
  function matches(r, f) {
    if (f.status && r.status !== f.status) { return false; }
    if (f.recipe && r.recipe !== f.recipe) { return false; }
    if (f.verified && verifiedName(r.verified) !== f.verified) { return false; }
    if (f.reason && r.category !== f.reason) { return false; }
    if (f.rmin !== '' && f.rmin !== undefined && !(r.reward !== null && r.reward >= Number(f.rmin))) { return false; }
    if (f.rmax !== '' && f.rmax !== undefined && !(r.reward !== null && r.reward <= Number(f.rmax))) { return false; }
    if (f.q) {
      var q = f.q.toLowerCase();
      var hay = (r.prompt + '\n' + r.reasoning + '\n' + r.answer + '\n' + r.seed + '\n' + (r.reason || '')).toLowerCase();
      if (hay.indexOf(q) < 0) { return false; }
    }
    return true;
  }
  function select(name, label, options, value) {
    var l = el('label', null, label + ' ');
    var s = el('select');
    s.setAttribute('name', name);
    s.id = 'filter-' + name;
    [['', 'all']].concat(options).forEach(function (o) {
      var opt = el('option', null, o[1]);
      opt.value = o[0];
      if (o[0] === (value || '')) { opt.selected = true; }
      s.appendChild(opt);
    });
    l.appendChild(s);
    return l;
  }
  function input(name, label, type, value) {
    var l = el('label', null, label + ' ');
    var i = el('input');
    i.type = type;
    i.name = name;
    i.id = 'filter-' + name;
    if (type === 'number') { i.step = '0.01'; i.min = '0'; i.max = '1'; }
    i.value = value || '';
    l.appendChild(i);
    return l;
  }
  function renderList(st) {
    var f = {};
    FILTERS.forEach(function (k) { f[k] = st[k] || ''; });
    var v = el('div');
    v.id = 'view-list';
    var note = el('p', 'note');
    note.id = 'sample-note';
    var total = D.shipped_total + D.rejected_total;
    if (D.rows.length < total) {
      note.textContent = 'Showing a sample: ' + D.shipped_shown + ' of ' + D.shipped_total +
        ' shipped chains and ' + D.rejected_shown + ' of ' + D.rejected_total +
        ' rejected rows (' + D.rows.length + ' of ' + total + ' rows; the same rows every time).';
    } else {
      note.textContent = 'All ' + total + ' rows: ' + D.shipped_total + ' shipped, ' + D.rejected_total + ' rejected.';
    }
    v.appendChild(note);
    var form = el('form', 'filters');
    form.id = 'filters';
    form.appendChild(select('status', 'status', [['shipped', 'shipped'], ['rejected', 'rejected']], f.status));
    form.appendChild(select('recipe', 'recipe', distinct(function (r) { return r.recipe; }).map(function (x) { return [x, x]; }), f.recipe));
    form.appendChild(select('verified', 'verified', [['true', 'true'], ['false', 'false'], ['none', 'no reference']], f.verified));
    form.appendChild(select('reason', 'reject reason', distinct(function (r) { return r.category; }).map(function (x) { return [x, x]; }), f.reason));
    form.appendChild(input('rmin', 'reward ≥', 'number', f.rmin));
    form.appendChild(input('rmax', 'reward ≤', 'number', f.rmax));
    form.appendChild(input('q', 'text', 'search', f.q));
    form.addEventListener('change', function () {
      var nf = {};
      FILTERS.forEach(function (k) { nf[k] = form.elements[k].value; });
      location.hash = listHash(nf);
    });
    form.addEventListener('submit', function (e) { e.preventDefault(); });
    v.appendChild(form);
    var rows = D.rows.filter(function (r) { return matches(r, f); });
    var count = el('p', 'note', rows.length + ' rows match.');
    count.id = 'match-count';
    v.appendChild(count);
    var t = el('table', 'rows');
    t.id = 'rows';
    var head = el('tr');
    ['status', 'recipe', 'seed', 'reward', 'verified', 'tokens', 'refl.'].concat(extraCols).concat(['prompt', 'reject reason'])
      .forEach(function (h) { head.appendChild(el('th', null, h)); });
    var thead = el('thead');
    thead.appendChild(head);
    t.appendChild(thead);
    var body = el('tbody');
    rows.forEach(function (r) {
      var tr = el('tr', 'row');
      tr.setAttribute('data-key', r.key);
      tr.appendChild(el('td', 'status-' + r.status, r.status));
      tr.appendChild(el('td', null, r.recipe));
      tr.appendChild(el('td', null, r.seed));
      tr.appendChild(el('td', null, fmt(r.reward, 3)));
      tr.appendChild(el('td', null, verifiedName(r.verified)));
      tr.appendChild(el('td', null, r.tokens === null ? '-' : r.tokens));
      tr.appendChild(el('td', null, r.reflections === null ? '-' : r.reflections));
      extraCols.forEach(function (k) {
        var x = (r.extra || {})[k];
        tr.appendChild(el('td', null, x === undefined ? '-' : (typeof x === 'number' ? fmt(x, 3) : String(x))));
      });
      tr.appendChild(el('td', 'text', r.prompt.slice(0, 120)));
      tr.appendChild(el('td', 'text', r.reason || ''));
      tr.addEventListener('click', function () { location.hash = 'chain=' + encodeURIComponent(r.key); });
      body.appendChild(tr);
    });
    t.appendChild(body);
    v.appendChild(t);
    return v;
  }

  // ---- one chain
  function legend() {
    var l = el('div', 'legend');
    l.appendChild(el('span', null, 'step confidence:'));
    [0, 0.2, 0.4, 0.6, 0.8, 1].forEach(function (c) {
      var s = el('span', null, c.toFixed(1));
      s.style.background = confColor(c);
      l.appendChild(s);
    });
    var r = el('span', null, 'reflection');
    r.style.background = '#ede7f6';
    l.appendChild(r);
    return l;
  }
  function metaTable(pairs) {
    var t = el('table', 'meta');
    pairs.forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === '') { return; }
      var tr = el('tr');
      tr.appendChild(el('th', null, p[0]));
      tr.appendChild(el('td', null, p[1]));
      t.appendChild(tr);
    });
    return t;
  }
  function renderChain(r) {
    var v = el('div');
    v.id = 'view-chain';
    v.setAttribute('data-key', r.key);
    var nav = el('div', 'nav');
    nav.appendChild(link('← list', 'list'));
    if (r.tree) { nav.appendChild(link('tree of this seed →', 'tree=' + encodeURIComponent(r.key))); }
    v.appendChild(nav);
    var pairs = [['status', r.status], ['chain id', r.id], ['seed', r.seed], ['recipe', r.recipe],
      ['reward', fmt(r.reward, 4)], ['verified', verifiedName(r.verified)], ['tokens', r.tokens],
      ['reflections', r.reflections], ['stage', r.stage], ['reason', r.reason]];
    Object.keys(r.extra || {}).sort().forEach(function (k) {
      var x = r.extra[k];
      pairs.push([k, typeof x === 'string' ? x : JSON.stringify(x)]);
    });
    v.appendChild(metaTable(pairs));
    if (r.system) { v.appendChild(el('h3', null, 'System')); v.appendChild(el('pre', 'system', r.system)); }
    v.appendChild(el('h3', null, 'Prompt'));
    v.appendChild(el('pre', 'prompt', r.prompt));
    v.appendChild(el('h3', null, 'Steps (' + r.steps.length + ')'));
    v.appendChild(legend());
    var ol = el('ol', 'steps');
    var k = 0;
    r.steps.forEach(function (s) {
      var li = el('li', s.reflection ? 'step reflection' : 'step');
      if (s.reflection) {
        li.appendChild(el('div', 'label', 'reflection'));
      } else {
        k += 1;
        li.style.background = confColor(s.conf);
        if (s.conf !== null) { li.setAttribute('data-conf', s.conf.toFixed(4)); }
        li.appendChild(el('div', 'label', 'step ' + k + ' · confidence ' + fmt(s.conf, 3)));
      }
      if (s.node !== null) { li.setAttribute('data-node', s.node); }
      li.appendChild(el('pre', null, s.text));
      ol.appendChild(li);
    });
    v.appendChild(ol);
    v.appendChild(el('h3', null, 'Answer'));
    v.appendChild(el('pre', 'answer', r.answer));
    if (r.reference) { v.appendChild(el('h3', null, 'Reference')); v.appendChild(el('pre', 'reference', r.reference)); }
    return v;
  }

  // ---- the tree a chain came from
  function renderTree(r) {
    var v = el('div');
    v.id = 'view-tree';
    var nav = el('div', 'nav');
    nav.appendChild(link('← list', 'list'));
    nav.appendChild(link('← chain', 'chain=' + encodeURIComponent(r.key)));
    v.appendChild(nav);
    var t = r.tree ? D.trees[r.tree] : null;
    if (!t) {
      v.appendChild(el('p', 'empty', 'No tree for this row (only marco_cot chains have one, and large runs embed the first trees only).'));
      return v;
    }
    var onPath = {};
    r.path.forEach(function (id) { onPath[id] = true; });
    var best = {};
    (t.best || []).forEach(function (id) { best[id] = true; });
    v.appendChild(metaTable([['seed', t.seed], ['file', t.file], ['nodes', t.nodes.length],
      ['stop', t.stop], ['this chain', r.path.length ? r.path.length + ' nodes, outlined in blue' : 'not found in the tree']]));
    var lg = legend();
    lg.appendChild(el('span', null, '· fill: node confidence (grey: injected text) · square: answered · blue: this chain'));
    v.appendChild(lg);
    var kids = {};
    var byId = {};
    var rootId = null;
    t.nodes.forEach(function (n) {
      byId[n.id] = n;
      if (n.parent === null || n.parent === undefined) { if (rootId === null) { rootId = n.id; } }
      else { (kids[n.parent] = kids[n.parent] || []).push(n.id); }
    });
    Object.keys(kids).forEach(function (k) { kids[k].sort(function (a, b) { return a - b; }); });
    var pos = {};
    var leaf = 0;
    var maxLevel = 0;
    function layout(id, level) {
      maxLevel = Math.max(maxLevel, level);
      var ch = kids[id] || [];
      if (!ch.length) { pos[id] = { x: leaf++, y: level }; return; }
      ch.forEach(function (c) { layout(c, level + 1); });
      pos[id] = { x: (pos[ch[0]].x + pos[ch[ch.length - 1]].x) / 2, y: level };
    }
    if (rootId !== null) { layout(rootId, 0); }
    var dx = 34, dy = 62, pad = 22;
    var w = Math.max(1, leaf) * dx + 2 * pad, h = (maxLevel + 1) * dy + 2 * pad;
    var svg = sv('svg', { id: 'tree-svg', width: w, height: h, viewBox: '0 0 ' + w + ' ' + h });
    function px(id) { return pad + pos[id].x * dx + dx / 2; }
    function py(id) { return pad + pos[id].y * dy; }
    t.nodes.forEach(function (n) {
      if (n.parent === null || n.parent === undefined || !pos[n.id] || !pos[n.parent]) { return; }
      var cls = 'edge' + (onPath[n.id] && onPath[n.parent] ? ' on-path' : '');
      svg.appendChild(sv('line', { 'class': cls, x1: px(n.parent), y1: py(n.parent), x2: px(n.id), y2: py(n.id) }));
    });
    var detail = el('div');
    detail.id = 'node-detail';
    function showNode(n) {
      clear(detail);
      detail.appendChild(metaTable([['node', n.id], ['visits', n.n], ['value q', fmt(n.q, 4)],
        ['confidence', fmt(n.conf, 4)], ['reflection', n.reflection ? 'yes' : ''], ['terminal', n.terminal],
        ['answer', n.answer], ['reward', n.reward === null ? null : fmt(n.reward, 4)],
        ['verified', n.answer !== null ? verifiedName(n.verified) : null]]));
      detail.appendChild(el('pre', null, n.text));
    }
    t.nodes.forEach(function (n) {
      if (!pos[n.id]) { return; }
      var cls = 'node' + (onPath[n.id] ? ' on-path' : '') + (n.answer !== null ? ' terminal' : '') +
        (n.reflection ? ' reflection' : '') + (best[n.id] ? ' best' : '');
      var g = sv('g', { 'class': cls, 'data-id': n.id, transform: 'translate(' + px(n.id) + ',' + py(n.id) + ')' });
      var fill = confColor(n.conf);
      if (n.answer !== null) { g.appendChild(sv('rect', { x: -9, y: -9, width: 18, height: 18, fill: fill })); }
      else { g.appendChild(sv('circle', { r: 9, fill: fill })); }
      var label = sv('text', { x: 12, y: 4 });
      label.textContent = 'n' + n.n;
      g.appendChild(label);
      var title = sv('title');
      title.textContent = 'node ' + n.id + ' · visits ' + n.n + ' · q ' + fmt(n.q, 3) + ' · conf ' + fmt(n.conf, 3) +
        (n.answer !== null ? ' · answer ' + n.answer : '') + '\n' + n.text;
      g.appendChild(title);
      g.addEventListener('click', function () { showNode(n); });
      svg.appendChild(g);
    });
    var wrap = el('div', 'tree-wrap');
    wrap.appendChild(svg);
    v.appendChild(wrap);
    v.appendChild(detail);
    var last = r.path.length ? byId[r.path[r.path.length - 1]] : null;
    if (last) { showNode(last); }
    return v;
  }

  function route() {
    var st = parseHash();
    document.body.setAttribute('data-view', st.view);
    if (st.view === 'summary' || st.view === 'compare') {
      showTab(st.view === 'compare' && document.getElementById('tab-compare') ? 'compare' : 'summary');
      return;
    }
    showTab('data');
    clear(root);
    if (st.view === 'list') { root.appendChild(renderList(st)); return; }
    var r = byKey[st.key];
    if (!r) {
      root.appendChild(el('p', 'empty', 'No row ' + st.key + ' in this report.'));
      root.appendChild(renderList({}));
      return;
    }
    root.appendChild(st.view === 'tree' ? renderTree(r) : renderChain(r));
    window.scrollTo(0, 0);
  }
  window.addEventListener('hashchange', route);
  route();
})();
