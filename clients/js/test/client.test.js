// Tests against a real pgchat: PGCHAT_URL is HAProxy in front of several
// instances, PGCHAT_CONTROL a test-only server that kills an instance with
// SIGKILL (POST /kill/app-N). TestJSClient (js_client_test.go) starts both
// and runs these tests: go test -run TestJSClient .
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import { Client, ServerError, ClosedError, publish } from '../index.js';

const url = process.env.PGCHAT_URL;
const control = process.env.PGCHAT_CONTROL;
const skip = url ? false : 'PGCHAT_URL is not set: run go test -run TestJSClient . in the repository';

const clients = [];
after(() => { for (const c of clients) c.close(); });

function client(opts) {
  const c = new Client({ url, WebSocket, minDelay: 50, maxDelay: 1000, ...opts });
  clients.push(c);
  c.connect();
  return c;
}

// until resolves once cond() is true, checking on every event of c.
function until(c, what, cond, ms = 20000) {
  return new Promise((resolve, reject) => {
    if (cond()) return resolve();
    const timer = setTimeout(() => { off(); reject(new Error('timed out waiting for ' + what)); }, ms);
    const off = c.on('frame', () => { if (cond()) { clearTimeout(timer); off(); resolve(); } });
  });
}

function collect(c) {
  const got = new Map();
  c.on('message', (m) => { if (!got.has(m.room)) got.set(m.room, []); got.get(m.room).push(m); });
  return got;
}

test('send resolves with the ack; others get the message; errors reject', { skip }, async () => {
  const room = 'js-basic-' + Date.now();
  const alice = client({ name: 'alice', rooms: [room] });
  const bob = client({ name: 'bob', rooms: [room] });
  const got = collect(bob);
  const frames = [];
  bob.on('frame', (f) => frames.push(f.type));
  await until(bob, 'bob joined', () => bob.joined(room));
  const ack = await alice.send(room, 'hello bob');
  assert.equal(ack.room, room);
  assert.equal(ack.seq, 1);
  await until(bob, 'the message', () => (got.get(room) || []).length === 1);
  const m = got.get(room)[0];
  assert.equal(m.author, 'alice');
  assert.equal(m.body, 'hello bob');
  assert.ok(frames.includes('welcome') && frames.includes('joined') && frames.includes('message'));

  await assert.rejects(alice.send(room, 'x'.repeat(5000)), (err) => err instanceof ServerError && err.code === 'too_large');
  await assert.rejects(alice.send(room, '   '), (err) => err instanceof ServerError && err.code === 'bad_request');
  await assert.rejects(alice.send('not-joined', 'x'), (err) => err instanceof ServerError && err.code === 'not_joined');

  // Published over HTTP, delivered like any other.
  const [res] = await publish(url, [{ room, body: 'from a backend', author: 'bot', ref: 'b1' }]);
  assert.equal(res.seq, 2);
  await until(bob, 'the published message', () => (got.get(room) || []).length === 2);
  assert.equal(got.get(room)[1].author, 'bot');

  const pending = alice.send(room, 'never acked?');
  alice.close();
  await pending.then(() => {}, (err) => assert.ok(err instanceof ClosedError));
  await assert.rejects(alice.send(room, 'after close'), ClosedError);
  bob.close();
  assert.equal(bob.state, 'closed');
});

test('a join without since after edits: states replay, no reconnect, live messages follow', { skip }, async () => {
  // The state replay of a first join skips the seqs of events, and the head
  // may be an event: neither is a gap.
  const room = 'js-states-' + Date.now();
  const alice = client({ name: 'alice', rooms: [room] });
  await until(alice, 'alice joined', () => alice.joined(room));
  const first = await alice.send(room, 'first');
  await alice.send(room, 'second');
  await new Promise((resolve, reject) => {
    const ref = 'edit-' + Date.now();
    const off = alice.on('frame', (f) => {
      if (f.ref !== ref) return;
      off();
      if (f.type === 'ack') resolve(); else reject(new Error('edit refused: ' + f.code));
    });
    alice.sendFrame({ type: 'edit', room, target: first.seq, body: 'first, edited', ref });
  });
  const dave = client({ name: 'dave', rooms: [room] });
  const got = collect(dave);
  const states = [];
  dave.on('state', (s) => states.push(typeof s === 'string' ? s : s.state));
  await until(dave, 'dave joined', () => dave.joined(room));
  assert.deepEqual((got.get(room) || []).map((m) => m.body), ['first, edited', 'second']);
  const live = await alice.send(room, 'third');
  await until(dave, 'the live message', () => (got.get(room) || []).some((m) => m.seq === live.seq));
  assert.ok(!states.includes('reconnecting'), 'dave reconnected: ' + states.join(','));
  alice.close();
  dave.close();
});

test('unknown frame types are emitted by type', { skip }, async () => {
  // The server answers a frame type it does not know with an error frame:
  // the generic path is the same one new types (presence, typing) take.
  const c = client({ name: 'carol', rooms: [] });
  await until(c, 'welcome', () => c.connected);
  const errors = [];
  c.on('error', (f) => errors.push(f));
  assert.equal(c.sendFrame({ type: 'wave', room: 'x' }), true);
  await until(c, 'the error frame', () => errors.length === 1);
  assert.equal(errors[0].code, 'bad_request');
  const seen = [];
  c.on('custom-type', (f) => seen.push(f));
  c._handle(c._ws, { type: 'custom-type', room: 'x', n: 1 }); // as if the server sent it
  assert.deepEqual(seen, [{ type: 'custom-type', room: 'x', n: 1 }]);
  c.close();
});

test('kill -9 of its instance: nothing lost, duplicated or reordered; every send acked', { skip: skip || (!control && 'PGCHAT_CONTROL is not set') }, async () => {
  const room = 'js-kill-' + Date.now();
  const total = 300;
  const sender = client({ name: 'sender', rooms: [room] });
  const watchers = [0, 1, 2].map((i) => client({ name: 'watcher-' + i, rooms: [room] }));
  const gotSender = collect(sender);
  const got = watchers.map(collect);
  for (const c of [sender, ...watchers]) await until(c, 'joined', () => c.joined(room));
  const victim = sender.instance;
  const instances = new Set([victim]);
  sender.on('welcome', (f) => instances.add(f.instance));

  const sentOn = new Map(); // ref -> connections it was written on
  sender.on('pending', (ev) => { if (ev.state === 'sent') sentOn.set(ev.ref, (sentOn.get(ev.ref) || 0) + 1); });
  const acks = [];
  let next = 0;
  let killed = false;
  async function worker() {
    while (next < total) {
      const i = next++;
      const ack = await sender.send(room, 'm' + i);
      acks.push(ack.seq);
      if (!killed && acks.length >= 100) {
        killed = true;
        const res = await fetch(`${control}/kill/${victim}`, { method: 'POST' });
        assert.equal(res.status, 204, 'kill ' + victim);
      }
    }
  }
  await Promise.all(Array.from({ length: 20 }, worker));
  assert.ok(killed);
  assert.equal(acks.length, total);
  assert.deepEqual([...acks].sort((a, b) => a - b), Array.from({ length: total }, (_, i) => i + 1), 'acked seqs are 1..total, each once');
  assert.ok(instances.size >= 2, `the sender reconnected to another instance (saw ${[...instances]})`);
  const resent = [...sentOn.values()].filter((n) => n > 1).length;
  assert.ok(resent > 0, 'some sends in flight at the kill were resent after the reconnect');
  console.log(`kill -9 of ${victim}: ${resent} sends resent with their ref, instances seen ${[...instances]}`);

  const want = Array.from({ length: total }, (_, i) => i + 1);
  for (const [i, c] of [sender, ...watchers].entries()) {
    const g = i === 0 ? gotSender : got[i - 1];
    await until(c, `client ${i} has every message`, () => (g.get(room) || []).length >= total);
    const seqs = g.get(room).map((m) => m.seq);
    assert.deepEqual(seqs, want, `client ${i}: seqs in order, no gap, no duplicate`);
    const bodies = new Set(g.get(room).map((m) => m.body));
    assert.equal(bodies.size, total, `client ${i}: every body once`);
  }

  // A new client resuming from a seq gets exactly what follows.
  const late = client({ name: 'late', rooms: [room], since: { [room]: total - 10 } });
  const lateGot = collect(late);
  await until(late, 'joined', () => late.joined(room));
  assert.deepEqual(lateGot.get(room).map((m) => m.seq), want.slice(total - 10));
  for (const c of [sender, late, ...watchers]) c.close();
});
