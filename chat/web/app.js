// pgchat browser page for wire protocol v1.
//
// The connection (reconnect with backoff, per-room resume with since, resend
// of unacked sends with their ref) is pgchat-client (clients/js), served at
// /pgchat-client.js; this file renders what it emits. Every server frame
// reaches onFrame, which dispatches it by type. Per room the page holds a
// contiguous run of messages low..high (by seq) and loads older ones from
// the history API.
//
// User data reaches the DOM only through textContent / text nodes, never
// innerHTML: a body like "<img src=x onerror=...>" shows literally.
import { Client } from './pgchat-client.js';

(() => {
  const BACKOFF_BASE = 500;      // ms; reconnect delay = random(0, min(cap, base*2^attempt))
  const BACKOFF_CAP = 15000;     // ms
  const HISTORY_PAGE = 50;
  const MAX_BODY_BYTES = 16384;  // refused locally: far above the server's 4 KiB default, below its 1009 read limit
  const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;

  const $ = (sel) => document.querySelector(sel);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function button(cls, text, onclick) {
    const b = el('button', cls, text);
    b.type = 'button';
    b.addEventListener('click', onclick);
    return b;
  }

  // localStorage may be unavailable (privacy modes); the page works without it.
  const saved = {
    get(k) { try { return localStorage.getItem('pgchat.' + k); } catch { return null; } },
    set(k, v) { try { localStorage.setItem('pgchat.' + k, v); } catch { /* ignore */ } },
    del(k) { try { localStorage.removeItem('pgchat.' + k); } catch { /* ignore */ } },
  };

  const params = new URLSearchParams(location.search);
  // The token is passed through unchanged to /ws and the APIs. Once read it
  // leaves the address bar (and so the history, bookmarks, screenshots);
  // sessionStorage keeps it for a reload of this tab only.
  const token = params.get('token') || sessionGet('token') || '';
  if (params.has('token')) {
    sessionSet('token', token);
    const u = new URL(location.href);
    u.searchParams.delete('token');
    history.replaceState(history.state, '', u.pathname + u.search + u.hash);
  }
  function sessionGet(k) { try { return sessionStorage.getItem('pgchat.' + k); } catch { return null; } }
  function sessionSet(k, v) { try { sessionStorage.setItem('pgchat.' + k, v); } catch { /* ignore */ } }

  // Refs must be unique across page loads too (the server dedupes by ref), so
  // they start with a random prefix. crypto.getRandomValues works on plain http.
  const refPrefix = 'c-' + Array.from(crypto.getRandomValues(new Uint8Array(8)),
    (b) => b.toString(16).padStart(2, '0')).join('') + '-';
  let refCount = 0;

  let wantName = '';      // the name we ask for
  let author = '';        // the name the server accepted (welcome)
  let instance = '';      // instance of the current connection
  let client = null;      // the pgchat-client, made by start
  let connected = false;  // welcome received on the current connection
  let expired = false;    // token expired or refused: the client has stopped
  let started = false;
  let persistRooms = true;
  const timers = { countdown: 0, notice: 0 };
  const rooms = new Map();   // name -> room, in sidebar order
  const pending = new Map(); // ref -> outgoing message not yet acked
  let current = null;        // the room shown

  const box = $('#messages');

  // ---- Formatting ----------------------------------------------------------

  function parseTS(ts) {
    const d = new Date(String(ts).replace(/(\.\d{3})\d+/, '$1')); // keep milliseconds only
    return isNaN(d) ? null : d;
  }
  const hhmm = (d) => [d.getHours(), d.getMinutes()].map((n) => String(n).padStart(2, '0')).join(':');

  // A stable hue per author, so people are easy to tell apart.
  function hue(name) {
    let h = 0;
    for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
    return h;
  }

  // nameError mirrors the server's rule: 1-32 printable characters (Go's
  // unicode.IsPrint: letters, marks, numbers, punctuation, symbols, space).
  function nameError(name) {
    const n = [...name].length;
    if (n < 1 || n > 32) return 'Your name must be 1 to 32 characters.';
    if (!/^[\p{L}\p{M}\p{N}\p{P}\p{S} ]+$/u.test(name)) return 'Your name can only contain printable characters.';
    return '';
  }

  function metaEl(who, ts, inst) {
    const meta = el('div', 'meta');
    const a = el('span', 'author', who);
    a.style.setProperty('--h', hue(who));
    const d = parseTS(ts);
    const t = el('time', 'time', d ? hhmm(d) : '');
    if (d) [t.dateTime, t.title] = [ts, d.toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'medium' })];
    meta.append(a, ' ', t);
    if (inst) meta.append(' ', Object.assign(el('span', 'instance', inst), { title: 'Accepted by server instance ' + inst }));
    return meta;
  }

  function renderMsg(room, m) {
    const li = el('li', m.author === author ? 'msg mine' : 'msg');
    li.dataset.room = room;
    li.dataset.seq = m.seq;
    li.append(metaEl(m.author, m.ts, m.instance), el('div', 'body', m.body));
    decorateMsg(li, room, m); // edited, deleted, reactions, actions (History section)
    return li;
  }

  // ---- Status and notices --------------------------------------------------

  // setStatus shows the connection state: offline, connecting, connected,
  // reconnecting (in secs) or expired; #status[data-state] is for tests.
  function setStatus(state, secs) {
    const s = $('#status');
    s.dataset.state = state;
    s.textContent = { offline: 'Offline', connecting: 'Connecting…', connected: 'Connected to',
      reconnecting: `Reconnecting in ${secs}s`, expired: 'Session expired', refused: 'Not signed in' }[state];
    $('#instance').textContent = instance || '—';
    $('#instance').hidden = state !== 'connected';
    $('#reconnect').hidden = state !== 'reconnecting' && state !== 'offline';
    document.body.dataset.conn = state;
    renderRoomState();
  }

  // showNotice shows text (never HTML) in the banner; sticky notices stay.
  function showNotice(text, sticky, action) {
    const n = $('#notice');
    n.querySelector('.text').textContent = text;
    n.querySelector('.action')?.remove();
    if (action) n.insertBefore(action, n.querySelector('.close'));
    n.hidden = false;
    clearTimeout(timers.notice);
    if (!sticky) timers.notice = setTimeout(() => { n.hidden = true; }, 8000);
  }

  // ---- Rooms ---------------------------------------------------------------

  function addRoom(name) {
    let r = rooms.get(name);
    if (r) return r;
    r = {
      name, msgs: new Map(), low: 0, high: 0, head: 0, unread: 0,
      joined: false, replaying: false, everJoined: false, error: '',
      loadingOlder: false, olderError: '', olderFailedAt: 0,
      scrollTop: null, draft: '', echo: new Map(),
    };
    // Sidebar entry.
    r.tab = el('li');
    r.tab.dataset.room = name;
    r.unreadEl = el('span', 'unread', '0');
    r.unreadSr = el('span', 'sr-only', ' unread');
    r.tabBtn = button('room', null, () => { switchTo(r); $('#composer').focus(); });
    r.tabBtn.append(el('span', 'name', '#' + name), r.unreadEl, r.unreadSr);
    r.tabBtn.title = '#' + name;
    r.tab.append(r.tabBtn);
    $('#rooms').append(r.tab);
    renderUnread(r);
    // Message log, hidden unless current. Pending sends live in outbox, below
    // the acknowledged messages, until the server echoes them with a seq.
    r.log = el('div', 'log');
    r.log.dataset.log = name;
    r.log.hidden = true;
    r.older = button('older', 'Load older messages', () => loadOlder(r, true));
    r.top = el('p', 'log-top');
    r.list = el('ol', 'msgs');
    r.outbox = el('ol', 'outbox');
    r.log.append(r.older, r.top, r.list, r.outbox);
    box.append(r.log);
    rooms.set(name, r);
    renderTop(r);
    saveRooms();
    if (client) { client.join(name); if (connected) markJoining(r); }
    return r;
  }

  function saveRooms() {
    if (persistRooms && started) saved.set('rooms', JSON.stringify([...rooms.keys()]));
  }

  function switchTo(r) {
    if (!r || r === current) return;
    const composer = $('#composer');
    if (current) {
      current.scrollTop = atBottom() ? null : box.scrollTop;
      current.draft = composer.value;
      current.log.hidden = true;
      current.tabBtn.removeAttribute('aria-current');
    }
    current = r;
    r.log.hidden = false;
    r.tabBtn.setAttribute('aria-current', 'true');
    box.querySelector('.empty').hidden = true;
    $('#room-title').textContent = '#' + r.name;
    composer.placeholder = 'Message #' + r.name;
    composer.value = r.draft;
    enableComposer();
    autoGrow();
    clearUnread(r);
    renderPresence(r);
    markRead(r);
    box.scrollTop = r.scrollTop == null ? box.scrollHeight : r.scrollTop;
    $('#jump').hidden = true;
    renderRoomState();
    fillViewport(r);
  }

  function leaveRoom(r) {
    if (!r) return;
    for (const p of pending.values()) if (p.room === r.name) pending.delete(p.ref);
    if (client) client.leave(r.name); // and its unacked sends are dropped
    const names = [...rooms.keys()];
    const i = names.indexOf(r.name);
    r.tab.remove();
    r.log.remove();
    rooms.delete(r.name);
    saveRooms();
    if (current !== r) return;
    current = null;
    renderPresence(null);
    const next = rooms.get(names[i + 1] || names[i - 1]);
    if (next) return switchTo(next);
    box.querySelector('.empty').hidden = false;
    $('#room-title').textContent = 'No room';
    $('#composer').value = '';
    $('#composer').placeholder = 'Join a room first';
    enableComposer();
    renderRoomState();
    $('#room').focus();
  }

  function enableComposer() {
    $('#composer').disabled = $('#send').disabled = expired || !current;
    $('#leave').disabled = !current;
  }

  function renderUnread(r) {
    r.unreadEl.textContent = String(r.unread);
    r.unreadEl.hidden = r.unreadSr.hidden = r.unread === 0;
    const total = [...rooms.values()].reduce((n, x) => n + x.unread, 0);
    document.title = total ? `(${total}) pgchat` : 'pgchat';
  }

  const clearUnread = (r) => { if (r.unread) { r.unread = 0; renderUnread(r); } };

  // renderTop shows, above the oldest message, either a button to load older
  // messages (also the loading indicator, so the height doesn't change) or
  // the beginning of the room.
  function renderTop(r) {
    const more = r.msgs.size > 0 && r.low > 1;
    r.older.hidden = !more;
    r.older.disabled = r.loadingOlder;
    r.older.textContent = r.loadingOlder ? 'Loading older messages…' : 'Load older messages';
    r.top.textContent = r.olderError ? r.olderError
      : !more && r.everJoined ? `This is the beginning of #${r.name}.` : '';
  }

  function renderRoomState() {
    const s = $('#room-state');
    const r = current;
    s.textContent = !r ? ''
      : r.error ? `Could not join: ${r.error}`
      : r.replaying ? 'Joining…'
      : started && !connected && !expired ? 'Messages you send now go out when the connection is back.' : '';
    s.className = r && r.error ? 'error' : '';
  }

  // ---- Scrolling and history -----------------------------------------------

  function atBottom() {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }
  function scrollBottom() {
    box.scrollTop = box.scrollHeight;
    $('#jump').hidden = true;
  }

  // fillViewport loads older messages while the list is too short to scroll,
  // since then no scroll event can ask for them.
  function fillViewport(r) {
    if (r === current && r.everJoined && box.scrollHeight <= box.clientHeight) loadOlder(r);
  }

  // loadOlder fetches the page before the lowest seq held and prepends it
  // without moving what the reader is looking at.
  async function loadOlder(r, force) {
    if (r.loadingOlder || r.replaying || !r.msgs.size || r.low <= 1) return; // a replay decides where the run starts
    if (!force && Date.now() - r.olderFailedAt < 5000) return; // don't hammer a failing server
    const before = r.low;
    r.loadingOlder = true;
    r.olderError = '';
    renderTop(r);
    let msgs = [];
    try {
      const url = `/api/rooms/${encodeURIComponent(r.name)}/messages?before=${before}&limit=${HISTORY_PAGE}`;
      const res = await fetch(url, { headers: token ? { Authorization: 'Bearer ' + token } : {} });
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(data.message || `HTTP ${res.status}`);
      msgs = (Array.isArray(data.messages) ? data.messages : []).filter((m) => m.seq < before);
    } catch (err) {
      r.olderError = 'Could not load older messages (' + err.message + '). Scroll up to try again.';
      r.olderFailedAt = Date.now();
    }
    r.loadingOlder = false;
    if (rooms.get(r.name) !== r || r.low !== before) return renderTop(r); // left or reset meanwhile
    const fromBottom = box.scrollHeight - box.scrollTop;
    if (msgs.length) {
      const frag = document.createDocumentFragment();
      msgs.forEach((m, i) => {
        // Seqs between messages are events (edits, reactions...), already
        // folded into the messages' state: no gap.
        r.msgs.set(m.seq, msgState(m));
        frag.append(renderMsg(r.name, m));
      });
      r.list.prepend(frag);
      r.low = msgs[0].seq;
    } else if (!r.olderError) {
      r.low = 1; // the server has nothing older: treat this as the beginning
    }
    renderTop(r);
    if (r === current) box.scrollTop = box.scrollHeight - fromBottom;
    if (msgs.length) fillViewport(r);
  }

  // A reader at the bottom stays there when the log's box changes size (the
  // composer grows, a phone keyboard or a rotation resizes the page). Scroll
  // events come a frame late: one that sees a size the observer has not yet
  // seen must not decide, as the resize, not the reader, moved the bottom.
  let stuck = true, seen = '';
  const boxSize = () => box.clientWidth + 'x' + box.clientHeight;
  box.addEventListener('scroll', () => {
    if (boxSize() === seen) stuck = atBottom();
    if (!current) return;
    if (box.scrollTop < 120) loadOlder(current);
    if (atBottom()) $('#jump').hidden = true;
  });
  new ResizeObserver(() => {
    seen = boxSize();
    if (stuck) box.scrollTop = box.scrollHeight;
  }).observe(box);
  $('#jump').addEventListener('click', () => { scrollBottom(); box.focus(); });

  // ---- Connection ----------------------------------------------------------

  // send writes a frame of any type (typing, read markers...) if connected.
  const send = (frame) => !!client && client.sendFrame(frame);

  // connect makes the client, the page's one connection to the server.
  function connect() {
    client = new Client({
      url: location.origin, name: wantName || 'guest', token, rooms: [...rooms.keys()],
      minDelay: BACKOFF_BASE, maxDelay: BACKOFF_CAP,
      verify: whyRefused,
    });
    client.on('frame', onFrame);
    client.on('state', onState);
    client.on('pending', onPending);
    client.on('fatal', onFatal);
    client.connect();
  }

  // whyRefused asks the server why a connection attempt failed before its
  // welcome (a browser can't read the 401 of a refused upgrade): the reason
  // when the token is missing, invalid or expired, else nothing (retry).
  async function whyRefused() {
    const res = await fetch('/api/whoami', { headers: token ? { Authorization: 'Bearer ' + token } : {} });
    if (res.status !== 401) return '';
    const data = await res.json().catch(() => ({}));
    return data.message || 'your token was refused';
  }

  function onState(ev) {
    clearInterval(timers.countdown);
    if (ev.state === 'connecting') return setStatus('connecting');
    if (ev.state !== 'reconnecting') return;
    connected = false;
    instance = '';
    for (const r of rooms.values()) { r.joined = false; r.replaying = false; }
    if (!navigator.onLine) return setStatus('offline'); // the online event reconnects
    const at = Date.now() + ev.delay;
    const tick = () => setStatus('reconnecting', Math.max(1, Math.ceil((at - Date.now()) / 1000)));
    tick();
    timers.countdown = setInterval(tick, 500);
  }

  // onFatal: the client stopped for good (token expired while connected,
  // or refused): say why in plain words, and don't retry.
  function onFatal(ev) {
    connected = false;
    expired = true;
    instance = '';
    clearInterval(timers.countdown);
    for (const r of rooms.values()) { r.joined = false; r.replaying = false; }
    if (ev.code === 4001) {
      setStatus('expired');
      showNotice('Your session has expired. Reload the page to sign in again.', true,
        button('action', 'Reload', () => location.reload()));
    } else {
      setStatus('refused');
      showNotice(`Can't connect: ${ev.reason}. Open the link you were given again, or ask for a new one.`, true);
    }
    enableComposer();
  }

  addEventListener('online', () => { if (client && !connected && !expired) client.reconnect(); });
  addEventListener('offline', () => { if (client && !connected && !expired) setStatus('offline'); });
  $('#reconnect').addEventListener('click', () => { if (client && !connected) client.reconnect(); });

  // onFrame dispatches every server frame by type.
  function onFrame(f) {
    switch (f && f.type) {
      case 'welcome': return onWelcome(f);
      case 'message': return onMessage(f);
      case 'joined': return onJoined(f);
      case 'ack': return onAck(f);
      case 'error': return onError(f);
      case 'left': return; // rooms are removed locally when the user leaves
      // message frames with a kind (edit, delete, react, unreact) go through onMessage to applyEvent
      case 'presence': return onPresence(f);
      case 'presence_diff': return onPresenceDiff(f);
      case 'typing': return onTyping(f);
      case 'read': return onReadReceipt(f);
      default: console.warn('pgchat: unknown frame', f);
    }
  }

  function onWelcome(f) {
    connected = true;
    instance = String(f.instance || '?');
    author = String(f.author || wantName);
    $('#me').textContent = author;
    setStatus('connected');
    for (const r of rooms.values()) markJoining(r); // the client joins them
  }

  function markJoining(r) {
    // A first join (no since) replays the messages' states, not every seq.
    r.stateReplay = !r.msgs.size && !r.everJoined;
    r.joined = false;
    r.replaying = true;
    r.error = '';
    renderRoomState();
  }

  function onMessage(f) {
    const r = rooms.get(f.room);
    if (!r || !Number.isInteger(f.seq)) return;
    // Our own acked sends up to this seq are now (or already) shown for real.
    let echo = false;
    for (const [seq, li] of r.echo) {
      if (seq <= f.seq) { li.remove(); r.echo.delete(seq); echo = true; }
    }
    if (r.msgs.size && f.seq <= r.high) return; // replay overlap or duplicate
    if (r.msgs.size && f.seq !== r.high + 1 && !r.stateReplay) { // a join without since replays states, not every seq
      if (r.replaying) {
        // The server replayed only the latest messages (joined will say
        // recovered:false). Start over from here; older ones load on scroll.
        console.warn(`pgchat: ${r.name} replay skips ${r.high + 1}..${f.seq - 1}`);
        r.skipped = true;
        r.msgs.clear();
        r.list.replaceChildren();
      } else {
        console.error(`pgchat: gap in ${r.name}: have seq ${r.high}, got ${f.seq}`);
      }
    }
    const cur = r === current;
    const stick = cur && atBottom();
    if (f.kind) {
      applyEvent(r, f); // History section; events are seqs of the stream, not lines of the log
    } else {
      r.msgs.set(f.seq, msgState(f));
      r.list.append(renderMsg(r.name, f));
    }
    if (r.msgs.size === 1) { r.low = f.seq; renderTop(r); }
    r.high = f.seq;
    if (r.everJoined && f.author !== author && (!cur || document.hidden)) { r.unread++; renderUnread(r); }
    if (cur && (stick || echo)) scrollBottom();
    else if (cur && r.everJoined) $('#jump').hidden = false;
    afterMessage(r, f);
  }

  function onJoined(f) {
    const r = rooms.get(f.room);
    if (!r) return;
    const first = !r.everJoined;
    r.joined = true;
    r.replaying = false;
    r.everJoined = true;
    r.head = Number.isInteger(f.seq) ? f.seq : r.high;
    if (r.stateReplay && r.msgs.size) r.high = Math.max(r.high, r.head); // the states shown are as of head
    r.stateReplay = false;
    if (f.recovered === false && !first) showNotice(`More messages were sent in #${r.name} while you were away than could be replayed. Scroll up to read older ones.`);
    else if (r.skipped) console.error(`pgchat: ${r.name} replay had a gap but recovered was not false`);
    r.skipped = false;
    renderTop(r);
    renderRoomState();
    if (first && r === current) { scrollBottom(); fillViewport(r); }
    // The client (re)sends what is waiting now.
    readStateOnJoined(r, f);
  }

  function onAck(f) {
    const p = pending.get(f.ref);
    if (!p) return;
    pending.delete(f.ref);
    const r = rooms.get(p.room);
    if (!r || !Number.isInteger(f.seq) || (r.msgs.size && f.seq <= r.high)) {
      p.el.remove(); // its message frame came first and is already shown
      return;
    }
    // Committed, but the message frame (with ts and instance) is still on its
    // way: show it as sent and replace it when the frame arrives.
    p.el.className = 'msg mine acked';
    p.el.dataset.state = 'acked';
    p.el.querySelector('.status').replaceChildren();
    r.echo.set(f.seq, p.el);
  }

  function onError(f) {
    const text = `${f.message || 'Error'} (${f.code || 'error'})`;
    if (f.ref && pending.has(f.ref)) return; // onPending shows it (the client retries what can be retried)
    const r = f.room ? rooms.get(f.room) : null;
    if (r && r.replaying && !f.ref) { // the join was refused
      r.replaying = false;
      r.error = text;
      renderRoomState();
      // The client retries a join refused as unavailable by itself.
      return;
    }
    showNotice(f.room ? `#${f.room}: ${text}` : text);
  }

  // ---- Sending -------------------------------------------------------------

  function sendBody(body, roomName) {
    const r = rooms.get(roomName);
    if (!r || !body.trim()) return null;
    const p = { ref: refPrefix + ++refCount, room: r.name, body, state: 'queued' };
    p.el = el('li', 'msg mine pending');
    p.el.dataset.room = r.name;
    p.el.dataset.ref = p.ref;
    p.el.append(metaEl(author || wantName, new Date().toISOString(), ''), el('div', 'body', body), el('div', 'status'));
    r.outbox.append(p.el);
    pending.set(p.ref, p);
    if (new TextEncoder().encode(body).length > MAX_BODY_BYTES) fail(p, 'too_large', 'The message is too long.');
    else submit(p);
    if (r === current) scrollBottom();
    return p.ref;
  }

  // submit hands p to the client, which sends it once the room is joined
  // and resends it with the same ref until it is acked.
  function submit(p) {
    p.state = 'queued';
    renderPending(p);
    client.send(p.room, p.body, { ref: p.ref }).catch(() => { /* onPending shows why */ });
  }

  // onPending follows the client's progress with a send.
  function onPending(ev) {
    const p = pending.get(ev.ref);
    if (!p || ev.state === 'acked') return; // acked: onAck
    if (ev.state === 'failed') {
      if (ev.code === 'not_joined' && !rooms.has(p.room)) return; // left meanwhile
      return fail(p, ev.code || 'closed', ev.error);
    }
    p.state = ev.state;
    p.error = ev.error || '';
    renderPending(p);
  }

  function fail(p, code, message) {
    p.state = 'failed';
    p.code = code;
    p.error = message;
    renderPending(p);
  }

  function renderPending(p) {
    p.el.className = 'msg mine pending' + (p.state === 'failed' ? ' failed' : '');
    p.el.dataset.state = p.state;
    const s = p.el.querySelector('.status');
    if (p.state === 'failed') {
      s.replaceChildren(el('span', null, `Not sent: ${p.error} `),
        button('retry', 'Retry', () => submit(p)),
        button('discard', 'Discard', () => { pending.delete(p.ref); p.el.remove(); }));
      return;
    }
    s.replaceChildren(el('span', 'clock', null), el('span', null,
      p.state === 'sent' ? 'Sending…'
        : p.state === 'retry' ? `Retrying soon (${p.error})…`
        : 'Waiting for the connection…'));
    s.firstChild.setAttribute('aria-hidden', 'true');
  }

  // ---- Forms and keyboard --------------------------------------------------

  const formError = (text) => { $('#form-error').textContent = text; };

  $('#join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const room = $('#room').value.trim();
    if (!ROOM_RE.test(room)) {
      formError('Room names are 1–64 letters, digits, _ - . or :, starting with a letter or digit.');
      return $('#room').focus();
    }
    if (!started) {
      const name = $('#name').value.trim();
      const err = nameError(name);
      if (err) { formError(err); return $('#name').focus(); }
      saved.set('name', name);
      start(name, [room]);
    } else {
      switchTo(addRoom(room));
      $('#room').value = '';
    }
    formError('');
    $('#composer').focus();
  });

  const composer = $('#composer');
  function autoGrow() {
    const stick = atBottom(); // height 'auto' would briefly scroll the log up
    composer.style.height = 'auto';
    composer.style.height = Math.min(composer.scrollHeight + 2, 160) + 'px';
    if (stick) box.scrollTop = box.scrollHeight;
  }
  composer.addEventListener('input', autoGrow);
  composer.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('#composer-form').requestSubmit();
    }
  });
  $('#composer-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const body = composer.value.replace(/\s+$/, '');
    if (!current || !body.trim()) return;
    sendBody(body, current.name);
    composer.value = '';
    autoGrow();
  });

  $('#leave').addEventListener('click', () => leaveRoom(current));
  $('#signout').addEventListener('click', () => {
    saved.del('name');
    saved.del('rooms');
    location.assign(location.pathname);
  });
  $('#notice .close').addEventListener('click', () => { $('#notice').hidden = true; });

  // Alt+Up / Alt+Down switch rooms from anywhere.
  document.addEventListener('keydown', (e) => {
    if (!e.altKey || (e.key !== 'ArrowUp' && e.key !== 'ArrowDown') || !current) return;
    const list = [...rooms.values()];
    const i = list.indexOf(current) + (e.key === 'ArrowUp' ? -1 : 1);
    if (list[i]) { e.preventDefault(); switchTo(list[i]); }
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && current) clearUnread(current);
  });

  // ---- Start ---------------------------------------------------------------

  // start leaves the welcome form (which becomes the sidebar's "join a room"
  // form, keeping the ids #room and #join) and connects.
  function start(name, roomNames) {
    started = true;
    wantName = name;
    const form = $('#join-form');
    form.querySelector('.name-field').hidden = true;
    $('#room-label').textContent = 'Join a room';
    $('#room').value = '';
    $('#room').placeholder = 'Join a room…';
    $('#join').textContent = 'Join';
    $('.sidebar').append(form);
    $('#start').remove();
    $('main.app').hidden = false;
    $('.who').hidden = false;
    $('#signout').hidden = !!token; // in token mode the name comes from the token
    $('#me').textContent = name;
    for (const n of roomNames) addRoom(n);
    switchTo(rooms.get(roomNames[0]));
    connect();
  }

  function init() {
    const urlName = (params.get('name') || '').trim();
    const urlRooms = [...new Set(params.getAll('room').filter((r) => ROOM_RE.test(r)))];
    const savedName = saved.get('name') || '';
    let savedRooms = [];
    try { savedRooms = JSON.parse(saved.get('rooms') || '[]').filter((r) => ROOM_RE.test(r)); } catch { /* ignore */ }
    if ((urlName && !nameError(urlName)) || token) {
      persistRooms = false; // a shared link doesn't replace the remembered rooms
      return start(urlName || savedName || 'guest', urlRooms.length ? urlRooms : ['general']);
    }
    if (savedName && !nameError(savedName)) { // returning: link's rooms first, then remembered ones
      const all = [...new Set([...urlRooms, ...savedRooms])];
      return start(savedName, all.length ? all : ['general']);
    }
    $('#name').value = urlName || '';
    if (urlRooms.length) $('#room').value = urlRooms[0];
    $('#name').focus();
  }

  // ---- History: edits, deletes, reactions, search ---------------------------

  // msgState is what the page keeps of a plain message, from a message frame
  // or the history endpoint: its current text, whether it was edited or
  // deleted, and its reactions ({emoji: count}; mine: the emoji we added).
  function msgState(m) {
    return {
      seq: m.seq, author: m.author, body: m.deleted ? '' : m.body, ts: m.ts, instance: m.instance,
      edited: m.edited || '', deleted: !!m.deleted,
      reactions: m.reactions && typeof m.reactions === 'object' ? { ...m.reactions } : {}, mine: new Set(),
    };
  }

  const QUICK_REACTION = '👍';

  // decorateMsg adds to a message's line what its state says: "(edited)",
  // the deleted placeholder, the reaction counts and, for a message still
  // there, buttons to react and (our own) to edit and delete.
  function decorateMsg(li, room, m) {
    const r = rooms.get(room);
    const s = (r && r.msgs.get(m.seq)) || msgState(m);
    const body = li.querySelector('.body');
    if (s.deleted) {
      li.classList.add('deleted');
      body.textContent = 'This message was deleted.';
      return;
    }
    body.textContent = s.body;
    if (s.edited) {
      const e = el('span', 'edited', ' (edited)');
      const d = parseTS(s.edited);
      if (d) e.title = 'Edited ' + d.toLocaleString();
      li.querySelector('.meta').append(e);
    }
    const bar = el('div', 'reactions');
    for (const [emoji, n] of Object.entries(s.reactions)) {
      if (n <= 0) continue;
      const b = button('reaction' + (s.mine.has(emoji) ? ' mine' : ''), `${emoji} ${n}`, () => toggleReaction(room, s.seq, emoji));
      b.setAttribute('aria-pressed', String(s.mine.has(emoji)));
      b.setAttribute('aria-label', `${emoji} ${n}: ${s.mine.has(emoji) ? 'remove your reaction' : 'react'}`);
      bar.append(b);
    }
    const actions = el('div', 'actions');
    if (!(QUICK_REACTION in s.reactions) || s.reactions[QUICK_REACTION] <= 0) {
      actions.append(Object.assign(button('act react', '+' + QUICK_REACTION, () => toggleReaction(room, s.seq, QUICK_REACTION)),
        { title: 'React with ' + QUICK_REACTION }));
    }
    if (s.author === author) {
      actions.append(button('act edit', 'Edit', () => startEdit(li, room, s.seq)));
      const del = button('act delete', 'Delete', () => {
        if (del.dataset.confirm) return sendEvent({ type: 'delete', room, target: s.seq });
        del.dataset.confirm = '1';
        del.textContent = 'Delete? Click again';
        setTimeout(() => { delete del.dataset.confirm; del.textContent = 'Delete'; }, 4000);
      });
      actions.append(del);
    }
    li.append(bar, actions);
  }

  // rerender redraws the line of message seq in place.
  function rerender(r, seq) {
    const old = r.list.querySelector(`li[data-seq="${seq}"]`);
    const m = r.msgs.get(seq);
    if (!old || !m) return;
    const focused = document.activeElement && old.contains(document.activeElement) ? document.activeElement.className : '';
    const li = renderMsg(r.name, m);
    old.replaceWith(li);
    if (focused) (li.querySelector('.' + focused.split(' ').join('.')) || li.querySelector('button') || box).focus();
  }

  // applyEvent folds an event of the stream into its target's state.
  function applyEvent(r, f) {
    const m = r.msgs.get(f.target);
    if (!m) return; // about a message we don't hold: its state loads with it
    switch (f.kind) {
      case 'edit':
        if (m.deleted) return;
        m.body = String(f.body ?? '');
        m.edited = f.ts;
        break;
      case 'delete':
        m.deleted = true;
        m.body = '';
        m.reactions = {};
        m.mine.clear();
        break;
      case 'react':
        m.reactions[f.emoji] = (m.reactions[f.emoji] || 0) + 1;
        if (f.author === author) m.mine.add(f.emoji);
        break;
      case 'unreact':
        m.reactions[f.emoji] = Math.max(0, (m.reactions[f.emoji] || 0) - 1);
        if (!m.reactions[f.emoji]) delete m.reactions[f.emoji];
        if (f.author === author) m.mine.delete(f.emoji);
        break;
      default:
        return console.warn('pgchat: unknown event', f);
    }
    rerender(r, f.target);
  }

  // sendEvent sends an edit, delete, react or unreact; its ack needs no
  // action (the event comes back in the stream), its error is shown.
  function sendEvent(frame) {
    if (!connected) return showNotice('Not connected: try again when the connection is back.');
    send({ ...frame, ref: refPrefix + 'e' + ++refCount });
  }

  function toggleReaction(room, seq, emoji) {
    const m = rooms.get(room)?.msgs.get(seq);
    if (!m || m.deleted) return;
    sendEvent({ type: m.mine.has(emoji) ? 'unreact' : 'react', room, target: seq, emoji });
  }

  // startEdit turns a message's text into a field: Enter saves, Escape
  // cancels.
  function startEdit(li, room, seq) {
    const m = rooms.get(room)?.msgs.get(seq);
    if (!m || m.deleted) return;
    const body = li.querySelector('.body');
    const field = el('textarea', 'edit-field');
    field.value = m.body;
    field.setAttribute('aria-label', 'Edit message');
    const form = el('form', 'edit-form');
    const cancel = () => { const r = rooms.get(room); if (r) rerender(r, seq); };
    form.append(field, Object.assign(el('button', 'save', 'Save'), { type: 'submit' }), button('cancel', 'Cancel', cancel));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = field.value.replace(/\s+$/, '');
      if (text.trim() && text !== m.body) sendEvent({ type: 'edit', room, target: seq, body: text });
      cancel();
    });
    field.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
      if (e.key === 'Escape') { e.preventDefault(); cancel(); }
    });
    body.replaceWith(form);
    li.querySelector('.actions')?.remove();
    field.focus();
  }

  // Search: results of GET /api/rooms/{room}/search; a click loads history
  // back to the message and shows it.
  function markedText(snippet) {
    // The server escapes the text and adds only <mark> and </mark>: rebuild
    // it as text nodes and <mark> elements, never as HTML.
    const frag = document.createDocumentFragment();
    const unescape = (t) => t.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
    String(snippet).split(/(<mark>[\s\S]*?<\/mark>)/).forEach((part) => {
      const m = /^<mark>([\s\S]*)<\/mark>$/.exec(part);
      frag.append(m ? el('mark', null, unescape(m[1])) : document.createTextNode(unescape(part)));
    });
    return frag;
  }

  async function runSearch(q) {
    const out = $('#search-results');
    const r = current;
    if (!r || !q.trim()) { out.hidden = true; return; }
    out.hidden = false;
    out.replaceChildren(el('p', 'search-state', 'Searching…'));
    try {
      const res = await fetch(`/api/rooms/${encodeURIComponent(r.name)}/search?q=${encodeURIComponent(q)}&limit=20`,
        { headers: token ? { Authorization: 'Bearer ' + token } : {} });
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(data.message || `HTTP ${res.status}`);
      const hits = Array.isArray(data.results) ? data.results : [];
      const list = el('ol', 'hits');
      for (const h of hits) {
        const b = button('hit', null, () => jumpTo(r, h.seq));
        b.dataset.seq = h.seq;
        b.append(el('span', 'author', h.author), ' ', el('span', 'snippet'));
        b.lastChild.append(markedText(h.snippet));
        const li = el('li');
        li.append(b);
        list.append(li);
      }
      out.replaceChildren(el('p', 'search-state', hits.length ? `${hits.length} result${hits.length > 1 ? 's' : ''} in #${r.name}` : `Nothing found in #${r.name}.`),
        list, button('close-search', 'Close', () => { out.hidden = true; $('#search').focus(); }));
    } catch (err) {
      out.replaceChildren(el('p', 'search-state error', 'Search failed: ' + err.message));
    }
  }

  async function jumpTo(r, seq) {
    for (let i = 0; i < 100 && r.low > seq && r.low > 1 && rooms.get(r.name) === r; i++) {
      const low = r.low;
      await loadOlder(r, true);
      if (r.low === low) break; // failed or nothing older
    }
    const li = r.list.querySelector(`li[data-seq="${seq}"]`);
    if (!li) return showNotice('That message is no longer in the history.');
    li.classList.add('found');
    li.tabIndex = -1;
    li.scrollIntoView({ block: 'center' });
    li.focus();
    setTimeout(() => li.classList.remove('found'), 3000);
  }

  $('#search-form').addEventListener('submit', (e) => { e.preventDefault(); runSearch($('#search').value); });
  $('#search').addEventListener('keydown', (e) => { if (e.key === 'Escape') $('#search-results').hidden = true; });
  // ---- Presence, typing and read state ---------------------------------------

  const TYPING_SEND_EVERY = 2000; // ms; the server relays at most one per 2 s anyway
  const TYPING_SHOW_FOR = 4000;   // ms "alice is typing…" stays after her last typing frame
  const READ_SEND_AFTER = 300;    // ms; read frames are coalesced

  // Per-room state lives in fields added on first use: members (Set),
  // memberCount, complete, typing (Map author -> timer), reads (Map author ->
  // seq), readSent (highest seq sent in a read frame), typingSent (ms).
  function presenceOf(r) {
    if (!r.members) Object.assign(r, { members: new Set(), memberCount: 0, complete: true, typing: new Map(), reads: new Map(), readSent: 0, readTimer: 0, typingSent: 0 });
    return r;
  }

  function onPresence(f) {
    const r = rooms.get(f.room);
    if (!r) return;
    presenceOf(r);
    r.complete = f.complete !== false;
    r.members = new Set(r.complete && Array.isArray(f.members) ? f.members.map(String) : []);
    r.memberCount = Number.isInteger(f.count) ? f.count : r.members.size;
    if (r === current) renderPresence(r);
  }

  function onPresenceDiff(f) {
    const r = rooms.get(f.room);
    if (!r) return;
    presenceOf(r);
    r.complete = f.complete !== false;
    if (!r.complete) r.members.clear();
    for (const a of f.joins || []) r.members.add(String(a));
    for (const a of f.leaves || []) { r.members.delete(String(a)); stopTyping(r, String(a)); }
    r.memberCount = Number.isInteger(f.count) ? f.count : r.members.size;
    if (r === current) renderPresence(r);
  }

  // renderPresence shows the current room's members in #members.
  function renderPresence(r) {
    const list = $('#member-list');
    if (!r) { $('#members-title').textContent = 'Online'; list.replaceChildren(); renderTyping(null); return; }
    presenceOf(r);
    $('#members-title').textContent = `Online — ${r.memberCount}`;
    const items = r.complete ? [...r.members].sort().map((a) => {
      const li = el('li', a === author ? 'me' : null, a);
      li.dataset.member = a;
      return li;
    }) : [el('li', 'count', `${r.memberCount} people online`)];
    list.replaceChildren(...items);
    renderTyping(r);
  }

  function onTyping(f) {
    const r = rooms.get(f.room);
    if (!r || !f.author || f.author === author) return;
    presenceOf(r);
    const a = String(f.author);
    clearTimeout(r.typing.get(a));
    r.typing.set(a, setTimeout(() => stopTyping(r, a), TYPING_SHOW_FOR));
    if (r === current) renderTyping(r);
  }

  function stopTyping(r, a) {
    if (!r.typing || !r.typing.has(a)) return;
    clearTimeout(r.typing.get(a));
    r.typing.delete(a);
    if (r === current) renderTyping(r);
  }

  function renderTyping(r) {
    const who = r && r.typing ? [...r.typing.keys()].sort() : [];
    $('#typing').textContent = who.length === 0 ? ''
      : who.length === 1 ? `${who[0]} is typing…`
      : who.length === 2 ? `${who[0]} and ${who[1]} are typing…`
      : `${who.length} people are typing…`;
  }

  composer.addEventListener('input', () => {
    const r = current;
    if (!r || !r.joined || !connected || !composer.value.trim()) return;
    presenceOf(r);
    if (Date.now() - r.typingSent < TYPING_SEND_EVERY) return;
    r.typingSent = Date.now();
    send({ type: 'typing', room: r.name });
  });

  // markRead tells the server, soon, that the current room is read up to its
  // newest message, if the reader can see it.
  function markRead(r) {
    if (!r || r !== current || document.hidden || !r.joined) return;
    presenceOf(r);
    if (r.high <= r.readSent || r.readTimer) return;
    r.readTimer = setTimeout(() => {
      r.readTimer = 0;
      if (r !== current || !connected || !r.joined || r.high <= r.readSent) return;
      r.readSent = r.high;
      send({ type: 'read', room: r.name, seq: r.high });
    }, READ_SEND_AFTER);
  }

  function readStateOnJoined(r, f) {
    presenceOf(r);
    if (Number.isInteger(f.read)) r.readSent = Math.max(r.readSent, f.read);
    if (Number.isInteger(f.unread)) {
      r.unread = r === current && !document.hidden ? 0 : f.unread;
      renderUnread(r);
    }
    markRead(r);
    loadReads(r);
  }

  // loadReads fetches who has read how far, for "seen by".
  async function loadReads(r) {
    try {
      const res = await fetch(`/api/rooms/${encodeURIComponent(r.name)}/reads`, { headers: token ? { Authorization: 'Bearer ' + token } : {} });
      if (!res.ok) return;
      const data = await res.json();
      for (const x of Array.isArray(data.reads) ? data.reads : []) {
        if (typeof x.author === 'string' && Number.isInteger(x.seq)) r.reads.set(x.author, Math.max(r.reads.get(x.author) || 0, x.seq));
      }
      renderSeen(r);
    } catch { /* "seen by" is a nicety: no notice */ }
  }

  function afterMessage(r, f) {
    presenceOf(r);
    stopTyping(r, String(f.author));
    markRead(r);
    if (f.author === author) renderSeen(r);
  }

  function onReadReceipt(f) {
    const r = rooms.get(f.room);
    if (!r || !Number.isInteger(f.seq) || !f.author) return;
    presenceOf(r);
    const a = String(f.author);
    r.reads.set(a, Math.max(r.reads.get(a) || 0, f.seq));
    if (a === author) {
      // Read on another device (or this one): unread is what came after it.
      r.readSent = Math.max(r.readSent, f.seq);
      let n = 0;
      for (const m of r.msgs.values()) if (m.seq > f.seq && m.author !== author) n++;
      if (n < r.unread || f.seq >= r.high) { r.unread = n; renderUnread(r); }
    }
    renderSeen(r);
  }

  // renderSeen puts "Seen by N" under the reader's own newest message: N
  // others have read up to it.
  function renderSeen(r) {
    r.list.querySelector('.seen')?.remove();
    let mine = null;
    for (const m of r.msgs.values()) if (m.author === author && (!mine || m.seq > mine.seq)) mine = m;
    if (!mine) return;
    let n = 0;
    for (const [a, seq] of r.reads) if (a !== author && seq >= mine.seq) n++;
    if (!n) return;
    const li = r.list.querySelector(`li.msg[data-seq="${mine.seq}"]`);
    if (li) li.append(el('div', 'seen', `Seen by ${n}`));
  }

  box.addEventListener('scroll', () => { if (current && atBottom()) markRead(current); });
  document.addEventListener('visibilitychange', () => { if (!document.hidden && current) markRead(current); });

  // ---- Test hook -------------------------------------------------------------

  // window.pgchat is for browser tests and debugging; state() returns copies.
  window.pgchat = Object.freeze({
    state() {
      const out = {};
      for (const r of rooms.values()) {
        out[r.name] = { seqs: [...r.msgs.keys()].sort((a, b) => a - b), unread: r.unread, joined: r.joined, head: r.head };
      }
      let waiting = 0, failed = 0;
      for (const p of pending.values()) p.state === 'failed' ? failed++ : waiting++;
      return {
        connected, status: $('#status').dataset.state, instance, author,
        current: current ? current.name : null, rooms: out, pending: waiting, failed,
      };
    },
    messages(room) {
      const r = rooms.get(room);
      return r ? [...r.msgs.values()].sort((a, b) => a.seq - b.seq).map((m) => ({ ...m })) : [];
    },
    send(body, room) { return sendBody(String(body), room || (current && current.name)); },
    join(room) { if (ROOM_RE.test(room)) switchTo(addRoom(room)); },
    leave(room) { leaveRoom(rooms.get(room)); },
    presence(room) {
      const r = rooms.get(room);
      if (!r) return null;
      presenceOf(r);
      return { members: [...r.members].sort(), count: r.memberCount, complete: r.complete, typing: [...r.typing.keys()].sort(), reads: Object.fromEntries(r.reads), readSent: r.readSent };
    },
    drop() { if (client) client.reconnect(); }, // simulate a network failure; the page reconnects
    // The states of a room's messages (History section), for tests.
    states(room) {
      const r = rooms.get(room);
      return r ? [...r.msgs.values()].sort((a, b) => a.seq - b.seq).map((m) => ({ ...m, mine: [...m.mine] })) : [];
    },
  });

  init();
})();
