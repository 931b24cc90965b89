// The recordings page (admin users): the audit list, and a replay of one asciinema v2 cast.
'use strict';
function $(id) { return document.getElementById(id); }
window.sgReplay = { done: false, term: null };

function play(id, title) {
  fetch('/api/recordings/' + encodeURIComponent(id), { credentials: 'same-origin' }).then(function (r) {
    if (!r.ok) throw new Error('HTTP ' + r.status);
    return r.text();
  }).then(function (text) {
    var lines = text.split('\n').filter(function (l) { return l.length; });
    var header = JSON.parse(lines[0]);
    $('player').hidden = false;
    $('player-title').textContent = title;
    $('player-screen').textContent = '';
    var term = new Terminal({ cols: header.width || 80, rows: header.height || 24 });
    term.open($('player-screen'));
    window.sgReplay = { done: false, term: term, header: header };
    var events = lines.slice(1).map(JSON.parse);
    var start = performance.now(), i = 0;
    // Real time, but no pause longer than a second.
    var shift = 0;
    (function step() {
      while (i < events.length) {
        var e = events[i];
        if (i > 0) shift += Math.max(0, (e[0] - events[i - 1][0]) - 1);
        if ((e[0] - shift) * 1000 > performance.now() - start) break;
        if (e[1] === 'o') term.write(e[2]);
        i++;
      }
      if (i < events.length) setTimeout(step, 20); else window.sgReplay.done = true;
    })();
  }).catch(function (e) { $('message').textContent = e.message; });
}

document.addEventListener('DOMContentLoaded', function () {
  fetch('/api/recordings', { credentials: 'same-origin' }).then(function (r) {
    return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || ('HTTP ' + r.status)); return j; });
  }).then(function (list) {
    var body = document.querySelector('#recordings tbody');
    list.slice().reverse().forEach(function (s) {
      var tr = document.createElement('tr');
      [new Date(s.start * 1000).toISOString(), s.web_user, s.device, s.ssh_user, s.bytes_in + ' / ' + s.bytes_out,
       s.result].forEach(function (v) { var td = document.createElement('td'); td.textContent = v; tr.appendChild(td); });
      var td = document.createElement('td');
      if (s.result === 'ok' || s.bytes_out > 0) {
        var b = document.createElement('button'); b.type = 'button'; b.textContent = 'Replay';
        b.className = 'replay'; b.dataset.session = s.session;
        b.onclick = function () { play(s.session, s.web_user + '@' + s.device + ' as ' + s.ssh_user); };
        td.appendChild(b);
      }
      tr.appendChild(td);
      body.appendChild(tr);
    });
    var want = new URLSearchParams(location.search).get('id');
    if (want) play(want, want);
  }).catch(function (e) { $('message').textContent = e.message; });
});

// The text of a terminal's screen and scrollback, one string per line (tests read it).
window.sgScreenLines = function (term) {
  var lines = [], buf = term._core.buffer;
  for (var i = 0; i < buf.lines.length; i++) lines.push(buf.translateBufferLineToString(i, true));
  return lines;
};
