// pgchat client for browsers and Node 20+, protocol v1 (docs/protocol.md).
//
// One WebSocket carries every room. The client keeps, per room, the seq of
// the last message it handed on; on every (re)connection it joins each room
// with since=that seq, so the server replays exactly what was missed, and it
// drops anything at or below it. A send carries a ref and stays pending until
// its ack; after a reconnect it is resent with the same ref, which the server
// stores once. Reconnects wait a random time between 0 and
// min(maxDelay, minDelay × 2^attempt) ("full jitter").
//
// No dependency: it uses the global WebSocket (browsers, Node 22+), or the
// constructor passed as options.WebSocket (the `ws` package on Node 20).

const OPEN = 1;

/** An error frame for a send or a join that retrying does not fix. */
export class ServerError extends Error {
  constructor(code, message, frame) {
    super(`${code}: ${message}`);
    this.name = 'ServerError';
    this.code = code;
    this.serverMessage = message;
    this.frame = frame;
  }
}

/** The client was closed, or stopped for good (see the "fatal" event). */
export class ClosedError extends Error {
  constructor(reason) {
    super(reason || 'client closed');
    this.name = 'ClosedError';
  }
}

function randomPrefix() {
  const b = new Uint8Array(8);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Full-jitter backoff: a random delay in [0, min(max, min × 2^attempt)]. */
export function backoff(minDelay, maxDelay, attempt) {
  return Math.random() * Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
}

/**
 * A resilient connection to pgchat. Events (client.on(type, fn)):
 * every server frame by its type ("welcome", "message", "joined", "left",
 * "ack", "error", and any type the server adds, such as "presence" or
 * "typing"), "frame" for every frame (after its type's listeners), and the client's own: "state"
 * ({state, delay?, code?, reason?}), "pending" ({ref, room, state}) and
 * "fatal" ({reason, code?}) when it stops for good.
 */
export class Client {
  constructor(options = {}) {
    const o = { minDelay: 250, maxDelay: 10000, connectTimeout: 10000, ...options };
    if (!o.url) throw new TypeError('pgchat: options.url is required');
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    if (!this._WebSocket) throw new TypeError('pgchat: no global WebSocket: pass options.WebSocket (e.g. the ws package)');
    this._opts = o;
    this._name = o.name || '';
    this._token = o.token || '';
    this._prefix = (o.refPrefix || 'js-' + randomPrefix()) + '-';
    this._nextRef = 0;
    this._listeners = new Map();
    this._rooms = new Map(); // name -> {last, started, live, failed}
    this._pending = new Map(); // ref -> pending send, in send order
    this._ws = null;
    this._gen = 0; // connection number, bumped per welcome
    this._welcomed = false;
    this._attempt = 0;
    this._timer = 0;
    this._closed = false;
    this._state = 'idle';
    this.instance = '';
    this.author = '';
    for (const room of o.rooms || []) this._addRoom(room, o.since && o.since[room]);
  }

  // ---- Events --------------------------------------------------------------

  /** Calls fn for every event of type; returns a function that stops it. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }

  _emit(type, value) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try { fn(value); } catch (err) { setTimeout(() => { throw err; }); } // a listener's bug must not break the client
    }
  }

  _setState(state, extra) {
    this._state = state;
    this._emit('state', { state, ...extra });
  }

  /** "idle", "connecting", "connected", "reconnecting" or "closed". */
  get state() { return this._state; }

  /** Whether a connection is open and welcomed. */
  get connected() { return this._welcomed && !!this._ws; }

  // ---- Rooms ---------------------------------------------------------------

  _addRoom(name, since) {
    let st = this._rooms.get(name);
    if (st) return st;
    st = { last: 0, started: false, live: false, failed: false, states: false };
    if (Number.isInteger(since) && since >= 0) { st.last = since; st.started = true; }
    this._rooms.set(name, st);
    return st;
  }

  /**
   * Joins room, now and on every reconnection. since (optional) asks for
   * the messages after that seq the first time; otherwise the server's
   * recent history comes first.
   */
  join(room, since) {
    const st = this._addRoom(room, since);
    st.failed = false;
    if (this.connected && !st.live) this._sendJoin(room, st);
  }

  /** Leaves room and rejects its pending sends. */
  leave(room) {
    if (!this._rooms.delete(room)) return;
    for (const p of [...this._pending.values()]) {
      if (p.room === room) this._finish(p, new ServerError('not_joined', `left ${room}`));
    }
    this.sendFrame({ type: 'leave', room });
  }

  /** The seq of the last message of room handed on, or undefined. */
  last(room) {
    const st = this._rooms.get(room);
    return st && st.started ? st.last : undefined;
  }

  /** Whether room is joined on the current connection. */
  joined(room) {
    const st = this._rooms.get(room);
    return !!st && st.live && this.connected;
  }

  get rooms() { return [...this._rooms.keys()]; }

  // ---- Connection ----------------------------------------------------------

  /** Connects, and keeps reconnecting until close(). */
  connect() {
    if (this._closed || this._ws || this._timer) return;
    this._open();
  }

  _url() {
    const u = new URL(this._opts.url, globalThis.location ? globalThis.location.href : undefined);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    if (u.protocol === 'https:') u.protocol = 'wss:';
    if (u.pathname === '' || u.pathname === '/') u.pathname = '/ws';
    if (this._token) u.searchParams.set('token', this._token); // browsers can't set headers on a WebSocket
    else if (this._name) u.searchParams.set('name', this._name);
    return u.toString();
  }

  _open() {
    this._timer = 0;
    if (this._closed) return;
    this._setState('connecting');
    let ws;
    try {
      ws = new this._WebSocket(this._url());
    } catch (err) {
      this._fatal(String(err && err.message || err));
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    const connectTimer = setTimeout(() => { if (this._ws === ws && !this._welcomed) this._drop(ws, 4000, 'no welcome in time'); }, this._opts.connectTimeout);
    ws.onmessage = (e) => {
      if (this._ws !== ws) return;
      let f;
      try { f = JSON.parse(typeof e.data === 'string' ? e.data : String(e.data)); } catch { return; }
      if (f && typeof f.type === 'string') this._handle(ws, f);
    };
    ws.onclose = (e) => {
      clearTimeout(connectTimer);
      if (this._ws === ws) this._lost(ws, e.code, e.reason);
    };
    ws.onerror = () => {}; // a close event follows
  }

  // _drop forgets ws at once, as if the network failed, then closes it.
  _drop(ws, code = 4000, reason = '') {
    if (this._ws === ws) this._lost(ws, 1006, reason);
    try { ws.close(code, reason); } catch { /* already closing */ }
  }

  /** Simulates a network failure: the client reconnects and resumes. */
  reconnect() {
    if (this._ws) this._drop(this._ws, 4000, 'reconnect');
    else if (this._timer) { clearTimeout(this._timer); this._open(); }
  }

  async _lost(ws, code, reason) {
    const welcomed = this._welcomed;
    this._ws = null;
    this._welcomed = false;
    this.instance = '';
    for (const st of this._rooms.values()) st.live = false;
    if (code === 1009) this._failLargest(ws);
    for (const p of this._pending.values()) if (p.state === 'sent') this._pendingState(p, 'queued');
    if (this._closed) return;
    if (code === 4001) return this._fatal(reason || 'token expired', code);
    if (!welcomed && this._opts.verify) {
      // A browser can't read why a handshake was refused: ask the caller
      // (the page asks GET /api/whoami) whether retrying can help.
      let why;
      try { why = await this._opts.verify(); } catch { why = undefined; }
      if (this._closed) return;
      if (why) return this._fatal(why, code);
      if (this._closed || this._ws || this._timer) return;
    }
    if (welcomed) this._attempt = 0;
    const delay = backoff(this._opts.minDelay, this._opts.maxDelay, this._attempt++);
    this._setState('reconnecting', { delay, code, reason });
    this._timer = setTimeout(() => this._open(), delay);
  }

  _fatal(reason, code) {
    this._closed = true;
    clearTimeout(this._timer);
    this._timer = 0;
    const err = new ClosedError(reason);
    for (const p of [...this._pending.values()]) this._finish(p, err);
    this._setState('closed', { code, reason });
    this._emit('fatal', { reason, code });
  }

  /** Closes the connection for good and rejects pending sends. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    this._timer = 0;
    const ws = this._ws;
    this._ws = null;
    this._welcomed = false;
    if (ws) { try { ws.close(1000, 'bye'); } catch { /* closing */ } }
    const err = new ClosedError();
    for (const p of [...this._pending.values()]) this._finish(p, err);
    this._setState('closed', { code: 1000 });
  }

  /**
   * Sends a raw frame now if connected, for frame types this client does
   * not know (typing, read markers...). Returns whether it was written.
   */
  sendFrame(frame) {
    if (!this.connected || this._ws.readyState !== OPEN) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  // ---- Frames --------------------------------------------------------------

  _handle(ws, f) {
    switch (f.type) {
      case 'welcome': this._onWelcome(ws, f); break;
      case 'message': if (!this._onMessage(ws, f)) return; break;
      case 'joined': if (!this._onJoined(ws, f)) return; break;
      case 'ack': this._onAck(f); break;
      case 'error': this._onError(f); break;
    }
    this._emit(f.type, f);
    this._emit('frame', f);
  }

  _onWelcome(ws, f) {
    this._welcomed = true;
    this._gen++;
    this.instance = String(f.instance || '');
    this.author = String(f.author || '');
    if (!this._name && !this._token) this._name = this.author; // keep the guest name: refs are per author
    this._setState('connected', { instance: this.instance });
    for (const [name, st] of this._rooms) if (!st.failed) this._sendJoin(name, st);
  }

  _sendJoin(room, st) {
    const j = { type: 'join', room };
    if (st.started) j.since = st.last;
    // A join without since replays the messages' current states, which skip
    // the seqs of events (edits, deletes, reactions): gaps there are expected.
    st.states = !st.started;
    this._ws.send(JSON.stringify(j));
  }

  // _onMessage reports whether f is new and in order (and so is emitted).
  _onMessage(ws, f) {
    const st = this._rooms.get(f.room);
    if (!st || !Number.isInteger(f.seq)) return false;
    if (st.started && f.seq <= st.last) return false; // replay overlap or duplicate
    if (st.started && f.seq !== st.last + 1 && !st.states) {
      if (st.live) {
        // A live gap: reconnect, and the join with since fills it.
        this._drop(ws, 4000, 'gap');
        return false;
      }
      // The server replays at most REPLAY_LIMIT messages; joined will say
      // recovered:false. Older ones are in the history API.
    }
    st.last = f.seq;
    st.started = true;
    return true;
  }

  _onJoined(ws, f) {
    const st = this._rooms.get(f.room);
    if (!st) return false;
    const head = Number.isInteger(f.seq) ? f.seq : st.last;
    if (f.recovered === false && head < st.last) st.last = head; // the server lost history: follow it
    if (st.states) { st.last = Math.max(st.last, head); st.states = false; } // the states replayed are as of the head
    if (!st.started) st.last = head;
    else if (head > st.last) { this._drop(ws, 4000, 'replay ended short of the head'); return false; }
    st.started = true;
    st.live = true;
    this._flush();
    return true;
  }

  _onAck(f) {
    const p = this._pending.get(f.ref);
    if (p) this._finish(p, null, { ref: p.ref, room: f.room, seq: f.seq });
  }

  _onError(f) {
    const p = f.ref ? this._pending.get(f.ref) : null;
    if (p) {
      if (f.code === 'unavailable' || f.code === 'rate_limited') {
        // Maybe not stored: resend later with the same ref.
        p.attempts++;
        p.sentGen = -1;
        this._pendingState(p, 'retry', f.message);
        const delay = backoff(this._opts.minDelay * 4, this._opts.maxDelay, p.attempts);
        p.timer = setTimeout(() => { p.timer = 0; p.sentGen = 0; this._flush(); }, delay);
      } else {
        this._finish(p, new ServerError(f.code, f.message, f));
      }
      return;
    }
    const st = f.room ? this._rooms.get(f.room) : null;
    if (st && !st.live && !f.ref) { // the join was refused
      if (f.code === 'unavailable' || f.code === 'rate_limited') {
        setTimeout(() => { if (this.connected && this._rooms.get(f.room) === st && !st.live) this._sendJoin(f.room, st); }, backoff(1000, this._opts.maxDelay, 1));
      } else {
        st.failed = true;
        const err = new ServerError(f.code, f.message, f);
        for (const q of [...this._pending.values()]) if (q.room === f.room) this._finish(q, err);
      }
    }
  }

  // ---- Sending -------------------------------------------------------------

  /**
   * Sends body to room (which must have been joined with join or
   * options.rooms). Resolves with {ref, room, seq} once committed; rejects
   * with a ServerError (bad_request, too_large, forbidden...) or a
   * ClosedError. Until then it is resent with the same ref after every
   * reconnect, so it is stored once. options.ref reuses a ref (a retry).
   */
  send(room, body, options = {}) {
    return new Promise((resolve, reject) => {
      if (this._closed) return reject(new ClosedError());
      const st = this._rooms.get(room);
      if (!st) return reject(new ServerError('not_joined', `join ${room} before sending to it`));
      if (st.failed) return reject(new ServerError('forbidden', `could not join ${room}`));
      const ref = options.ref || this._prefix + ++this._nextRef;
      const p = { ref, room, body: String(body), sentGen: 0, attempts: 0, timer: 0, state: 'queued', resolve, reject };
      this._pending.set(ref, p);
      this._pendingState(p, 'queued');
      this._flush();
    });
  }

  /** The sends not yet acked: [{ref, room, body, state}]. */
  pending() {
    return [...this._pending.values()].map(({ ref, room, body, state }) => ({ ref, room, body, state }));
  }

  _pendingState(p, state, error) {
    p.state = state;
    this._emit('pending', { ref: p.ref, room: p.room, state, error });
  }

  // _flush writes, in send order, every pending send of a live room that
  // the current connection has not carried yet.
  _flush() {
    if (!this.connected) return;
    for (const p of this._pending.values()) {
      const st = this._rooms.get(p.room);
      if (p.sentGen === this._gen || p.sentGen === -1 || !st || !st.live) continue;
      if (this._ws.readyState !== OPEN) return;
      p.sentGen = this._gen;
      p.ws = this._ws;
      this._ws.send(JSON.stringify({ type: 'send', room: p.room, body: p.body, ref: p.ref }));
      this._pendingState(p, 'sent');
    }
  }

  // _failLargest fails the largest send in flight on ws after a close 1009
  // (frame too big), so that resending it can't loop.
  _failLargest(ws) {
    let big = null;
    for (const p of this._pending.values()) {
      if (p.state === 'sent' && p.ws === ws && (!big || p.body.length > big.body.length)) big = p;
    }
    if (big) this._finish(big, new ServerError('too_large', 'the message is too large for the server'));
  }

  _finish(p, err, ack) {
    this._pending.delete(p.ref);
    clearTimeout(p.timer);
    if (err) {
      this._emit('pending', { ref: p.ref, room: p.room, state: 'failed', error: err.message, code: err.code });
      p.reject(err);
    } else {
      this._emit('pending', { ref: p.ref, room: p.room, state: 'acked', seq: ack.seq });
      p.resolve(ack);
    }
  }
}

/**
 * Posts messages through the publish API (POST /api/messages): for
 * backends. baseUrl is http(s)://host:port; messages are {room, body, ref?,
 * author?}. Resolves with the results, in order; rejects with a
 * ServerError carrying the HTTP status.
 */
export async function publish(baseUrl, messages, { token, fetch: f = globalThis.fetch } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  const res = await f(new URL('/api/messages', baseUrl), { method: 'POST', headers, body: JSON.stringify({ messages }) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new ServerError(data.code || 'unavailable', data.message || `HTTP ${res.status}`, data);
    err.status = res.status;
    throw err;
  }
  return data.results;
}
