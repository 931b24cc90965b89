// The web terminal's page: login, the device list, terminals (xterm.js over a WebSocket).
'use strict';
var sg = { csrf: '', user: '', admin: false, terminals: [] };
window.sgTerminals = sg.terminals;

function $(id) { return document.getElementById(id); }
function say(text, info) { var m = $('message'); m.textContent = text || ''; m.className = info ? 'info' : ''; }

function api(method, path, body) {
  var headers = { 'X-CSRF-Token': sg.csrf };
  var init = { method: method, headers: headers, credentials: 'same-origin' };
  if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
  return fetch(path, init).then(function (r) {
    return r.json().catch(function () { return {}; }).then(function (j) {
      if (!r.ok) { var e = new Error(j.error || ('HTTP ' + r.status)); e.status = r.status; throw e; }
      return j;
    });
  });
}

function showLogin() {
  $('app').hidden = true; $('login').hidden = false; $('who').textContent = '';
}

function showApp(me) {
  sg.csrf = me.csrf; sg.user = me.user; sg.admin = me.admin;
  $('login').hidden = true; $('app').hidden = false;
  $('who').textContent = 'logged in as ' + me.user + (me.admin ? ' (admin)' : '');
  $('recordings-link').hidden = !me.admin;
  loadDevices();
}

function loadDevices() {
  return api('GET', '/api/devices').then(function (list) {
    var body = document.querySelector('#devices tbody');
    body.textContent = '';
    list.forEach(function (d) {
      var tr = document.createElement('tr');
      tr.dataset.device = d.id;
      var id = document.createElement('td'); id.textContent = d.id;
      var st = document.createElement('td'); st.textContent = d.online ? 'online' : 'offline';
      st.className = d.online ? 'online' : 'offline';
      var act = document.createElement('td');
      var b = document.createElement('button'); b.type = 'button'; b.textContent = 'Connect';
      b.className = 'connect'; b.onclick = function () { askCredentials(d.id); };
      act.appendChild(b);
      tr.appendChild(id); tr.appendChild(st); tr.appendChild(act);
      body.appendChild(tr);
    });
    if (!list.length) say('No devices you may reach.');
  }).catch(handleError);
}

function handleError(e) {
  if (e.status === 401) { showLogin(); }
  say(e.message);
}

function askCredentials(device) {
  $('connect-device').textContent = device;
  $('connect-form').dataset.device = device;
  $('connect-form').hidden = false;
  $('ssh-user').focus();
}

function clearCredentials() {
  $('ssh-password').value = ''; $('ssh-key').value = ''; $('ssh-passphrase').value = '';
}

function openTerminal(device, start) {
  var panel = document.createElement('div'); panel.className = 'terminal-panel';
  var title = document.createElement('span'); title.className = 'title';
  title.textContent = device + ' as ' + start.user;
  var status = document.createElement('span'); status.className = 'status'; status.textContent = 'connecting…';
  var fp = document.createElement('div'); fp.className = 'fingerprint';
  var close = document.createElement('button'); close.type = 'button'; close.textContent = 'Close';
  var screen = document.createElement('div'); screen.className = 'screen';
  panel.appendChild(title); panel.appendChild(status); panel.appendChild(close);
  panel.appendChild(fp); panel.appendChild(screen);
  $('terminals').appendChild(panel);

  var term = new Terminal({ cols: 80, rows: 24, cursorBlink: true });
  term.open(screen);
  window.xtermFit.fit(term);
  start.cols = term.cols; start.rows = term.rows;
  var t = { device: device, term: term, panel: panel, status: status, phase: 'connecting', message: '',
            fingerprint: '', session: '' };
  sg.terminals.push(t);

  var proto = location.protocol === 'https:' ? 'wss://' : 'ws://';
  var ws = new WebSocket(proto + location.host + '/api/terminal?device=' + encodeURIComponent(device) +
                         '&csrf=' + encodeURIComponent(sg.csrf));
  ws.binaryType = 'arraybuffer';
  t.ws = ws;
  var decoder = new TextDecoder('utf-8');
  var encoder = new TextEncoder();
  ws.onopen = function () {
    ws.send(JSON.stringify(start));
    start.password = ''; start.key = ''; start.passphrase = '';
  };
  ws.onmessage = function (ev) {
    if (typeof ev.data !== 'string') { term.write(decoder.decode(new Uint8Array(ev.data), { stream: true })); return; }
    var m = JSON.parse(ev.data);
    t.phase = m.phase;
    if (m.phase === 'hostkey') {
      t.fingerprint = m.fingerprint;
      fp.textContent = 'host key ' + m.fingerprint + (m.firstUse ? ' (first use: now pinned)' : ' (matches the pinned key)');
    } else if (m.phase === 'connected') {
      t.session = m.session; status.textContent = 'connected'; term.focus();
    } else if (m.phase === 'closed') {
      t.message = m.message;
      status.textContent = m.ok ? 'closed' : m.message;
      status.className = 'status' + (m.ok ? '' : ' error');
      if (!m.ok && !t.session) screen.className = 'screen unused'; // never had a shell: the message says it all
      else if (!m.ok) term.write('\r\n\x1b[31m' + m.message + '\x1b[0m\r\n');
    }
  };
  ws.onclose = function (ev) {
    if (t.phase === 'closed') return;
    // A refused upgrade shows no reason to the page: ask the same check over plain HTTP.
    fetch('/api/terminal?device=' + encodeURIComponent(device) + '&csrf=' + encodeURIComponent(sg.csrf),
          { credentials: 'same-origin' }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        return r.ok ? 'the terminal closed (' + ev.code + ')' : j.error + ' (HTTP ' + r.status + ')';
      });
    }).catch(function () { return 'the gateway is unreachable'; }).then(function (text) {
      t.phase = 'closed'; t.message = text;
      status.textContent = text; status.className = 'status error';
      if (!t.session) screen.className = 'screen unused';
      else term.write('\r\n\x1b[31m' + text + '\x1b[0m\r\n');
    });
  };
  term.on('data', function (d) { if (ws.readyState === 1) ws.send(encoder.encode(d)); });
  term.on('resize', function (s) { if (ws.readyState === 1) ws.send(JSON.stringify({ resize: [s.cols, s.rows] })); });
  close.onclick = function () { ws.close(); panel.remove(); };
  return t;
}

// The text of a terminal's screen and scrollback, one string per line (tests read it).
window.sgScreenLines = function (term) {
  var lines = [], buf = term._core.buffer;
  for (var i = 0; i < buf.lines.length; i++) lines.push(buf.translateBufferLineToString(i, true));
  return lines;
};

document.addEventListener('DOMContentLoaded', function () {
  $('login-form').onsubmit = function (ev) {
    ev.preventDefault();
    var body = { user: $('login-user').value, password: $('login-password').value };
    $('login-password').value = '';
    api('POST', '/api/login', body).then(function (me) { say(''); showApp(me); }).catch(function (e) { say(e.message); });
  };
  $('logout-button').onclick = function () {
    api('POST', '/api/logout', {}).then(function () {
      sg.terminals.forEach(function (t) { t.ws.close(); });
      sg.csrf = ''; showLogin(); say('logged out', true);
    }).catch(handleError);
  };
  $('refresh-button').onclick = loadDevices;
  $('connect-cancel').onclick = function () { clearCredentials(); $('connect-form').hidden = true; };
  $('connect-form').onsubmit = function (ev) {
    ev.preventDefault();
    var start = { user: $('ssh-user').value, password: $('ssh-password').value, key: $('ssh-key').value,
                  passphrase: $('ssh-passphrase').value };
    clearCredentials();
    $('connect-form').hidden = true;
    openTerminal($('connect-form').dataset.device, start);
  };
  window.addEventListener('resize', function () {
    sg.terminals.forEach(function (t) { window.xtermFit.fit(t.term); });
  });
  api('GET', '/api/me').then(showApp).catch(function () { showLogin(); });
});
