// bap-engine dashboard: optional enhancements. Every page reads and acts
// without this script; with it, pages refresh their live regions when the
// server says something changed, and action forms post without leaving the
// page.
(function () {
  'use strict';

  var body = document.body;
  // What the page refreshes on; an action that leads to another page
  // changes it.
  function live() { return body.getAttribute('data-live') || ''; }
  var status = document.getElementById('live-status');

  function say(text) {
    if (status) {
      status.hidden = false;
      status.textContent = text;
    }
  }

  // swap replaces this page's regions with those of html (the same page,
  // fetched again). A region holding the focus or an open confirmation is
  // left alone, so nobody loses what they are typing.
  function swap(doc) {
    if (!doc.querySelector('[data-live-region]')) {
      // The page is gone (an engine destroyed elsewhere): show what the
      // server says now.
      var main = document.getElementById('main');
      var fresh = doc.getElementById('main');
      if (main && fresh) { main.innerHTML = fresh.innerHTML; }
      return;
    }
    document.querySelectorAll('[data-live-region]').forEach(function (el) {
      if (el.contains(document.activeElement) || el.querySelector('details[open]')) {
        return;
      }
      var fresh = doc.getElementById(el.id);
      if (fresh) {
        el.innerHTML = fresh.innerHTML;
      }
    });
  }

  var busy = false, again = false, last = 0;
  var minGap = 1000;

  function refresh() {
    if (busy) { again = true; return; }
    var wait = last + minGap - Date.now();
    if (wait > 0) { busy = true; setTimeout(function () { busy = false; refresh(); }, wait); return; }
    busy = true;
    last = Date.now();
    // An action may move the tab to another page while this is in flight:
    // the answer is then for a page no longer shown, and is dropped.
    var asked = location.href;
    fetch(asked, { credentials: 'same-origin', headers: { 'X-Live-Refresh': '1' } })
      .then(function (r) {
        if (r.redirected && new URL(r.url).pathname.indexOf('/ui/signin') === 0) {
          location.assign(r.url);
          return null;
        }
        return (r.ok || r.status === 404) ? r.text() : null;
      })
      .then(function (html) {
        if (html && location.href === asked) {
          swap(new DOMParser().parseFromString(html, 'text/html'));
          say('Live: updated at ' + new Date().toLocaleTimeString());
        }
      })
      .catch(function () { say('Live updates interrupted; retrying.'); })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  var events = body.getAttribute('data-events');
  if (live() && events && window.EventSource) {
    var es = new EventSource(events);
    var greeted = false;
    es.addEventListener('hello', function () {
      // A second greeting follows a gap in the feed: catch up.
      if (greeted) { refresh(); }
      greeted = true;
      say('Live updates on.');
    });
    es.addEventListener('engine', function (ev) {
      var d = {};
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      if (live() === 'any' || live() === 'engine:' + d.id) { refresh(); }
    });
    es.addEventListener('fleet', function () {
      if (live() === 'any') { refresh(); }
    });
    es.onerror = function () { say('Live updates interrupted; retrying.'); };
  }

  // Action forms post in the background and show the answer in place. The
  // answer to a POST that leads to another page (a destroy) is that page:
  // it replaces this one, and the address follows.
  document.addEventListener('submit', function (ev) {
    var form = ev.target;
    if (!form.hasAttribute('data-enhance') || !window.fetch) { return; }
    ev.preventDefault();
    var buttons = form.querySelectorAll('button');
    buttons.forEach(function (b) { b.disabled = true; });
    form.setAttribute('aria-busy', 'true');
    say('Working…');
    var moved = null;
    fetch(form.action, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'X-Requested-With': 'fetch' },
      body: new URLSearchParams(new FormData(form))
    }).then(function (r) {
      if (r.redirected && new URL(r.url).pathname !== location.pathname) {
        moved = r.url;
      }
      return r.text();
    }).then(function (html) {
      var doc = new DOMParser().parseFromString(html, 'text/html');
      var main = document.getElementById('main');
      var fresh = doc.getElementById('main');
      if (!main || !fresh) { return; }
      if (moved) {
        history.pushState(null, '', moved);
        body.setAttribute('data-live', doc.body.getAttribute('data-live') || '');
      }
      main.innerHTML = fresh.innerHTML;
      document.title = doc.title;
      main.focus();
      say('Done at ' + new Date().toLocaleTimeString());
    }).catch(function () {
      // The network failed: fall back to an ordinary post.
      form.removeAttribute('data-enhance');
      form.submit();
    }).then(function () {
      buttons.forEach(function (b) { b.disabled = false; });
      form.removeAttribute('aria-busy');
    });
  });

  // Back and forward after such a move load the page they name.
  window.addEventListener('popstate', function () { location.reload(); });
})();
