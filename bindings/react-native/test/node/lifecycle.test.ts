// The lifecycle adapters and the handle registry, against the real core.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { connectAppState, connectNetInfo, type NetInfoStateLike } from '../../src/lifecycle';
import { heldHandles, type SyncClient } from '../../src/api';
import { copyFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

import { BOB, Database, SCHEMA, SyncClient as Client, dbPath, device, ferry, uid, useServer } from './support';

const serverOf = useServer({ before, after });

test('NetInfo drives online, and an unknown reachability trusts isConnected', async () => {
  const d = device(serverOf().url);
  let emit: (s: NetInfoStateLike) => void = () => {};
  let removed = false;
  const stop = connectNetInfo(d.client, {
    addEventListener: (l) => {
      emit = l;
      return () => {
        removed = true;
      };
    },
  });
  emit({ isConnected: false, isInternetReachable: false });
  assert.equal(d.client.status().online, false);
  emit({ isConnected: true, isInternetReachable: null });
  assert.equal(d.client.status().online, true);
  emit({ isConnected: true, isInternetReachable: false });
  assert.equal(d.client.status().online, false);
  // The connection type and its cost become the network hints.
  assert.deepEqual(d.client.network(), { kind: 'unknown', metered: false, rttMs: null });
  emit({ isConnected: true, type: 'cellular', details: { isConnectionExpensive: true } });
  assert.deepEqual(d.client.network(), { kind: 'cellular', metered: true, rttMs: null });
  assert.equal(d.client.status().online, true);
  emit({ isConnected: true, type: 'bluetooth', details: null });
  assert.deepEqual(d.client.network(), { kind: 'other', metered: false, rttMs: null });
  d.client.setNetwork({ kind: 'wifi', rttMs: 40 });
  assert.deepEqual(d.client.network(), { kind: 'wifi', metered: false, rttMs: 40 });
  assert.throws(() => d.client.setNetwork({ rttMs: -1 }), RangeError);
  assert.throws(() => d.client.setNetwork({ rttMs: 1.5 }), RangeError);
  assert.equal(d.client.network().rttMs, 40, 'a refused hint changes nothing');
  stop();
  assert.ok(removed);
  await d.client.close();
  d.db.close();
});

test('on a metered network, meteredPriority holds back the lower priorities until wifi', async () => {
  const url = serverOf().url;
  const a = device(url, BOB);
  const tag = uid('metered');
  await a.client.write([
    { op: 'create', collection: 'projects', fields: { id: `${tag}-p`, name: tag } },
    { op: 'create', collection: 'tasks', fields: { id: `${tag}-t1`, title: tag } },
    { op: 'create', collection: 'tasks', fields: { id: `${tag}-t2`, title: tag } },
  ]);
  await a.client.sync();
  const schema = { ...SCHEMA, collections: (SCHEMA.collections as Array<{ name: string }>).map((c) => (c.name === 'projects' ? { ...c, priority: 0 } : c)) };
  const db = Database.open(dbPath('metered'), schema);
  const client = new Client(db, { url, tokenProvider: async () => BOB, config: { meteredPriority: 0 } });
  let emit: (s: NetInfoStateLike) => void = () => {};
  const stop = connectNetInfo(client, { addEventListener: (l) => ((emit = l), () => {}) });
  emit({ isConnected: true, type: 'cellular', details: { isConnectionExpensive: true } });
  const first = await client.sync();
  assert.equal(first.deferredAfter, 0);
  assert.equal(client.status().completedPriority, 0, 'the status says what is complete');
  assert.ok(db.get('projects', `${tag}-p`), 'the projects came on cellular');
  assert.equal(db.get('tasks', `${tag}-t1`), null, 'the tasks wait');
  emit({ isConnected: true, type: 'wifi', details: { isConnectionExpensive: false } });
  const second = await client.sync();
  assert.equal(second.deferredAfter, null);
  assert.ok(db.get('tasks', `${tag}-t1`) && db.get('tasks', `${tag}-t2`), 'and follow on wifi');
  stop();
  await client.close();
  db.close();
  await a.client.close();
  a.db.close();
});

test('commits made while JS is busy reach a change listener in fewer calls than commits', async () => {
  const db = Database.open(dbPath('burst'), SCHEMA);
  const calls: number[] = [];
  const stop = db.onChanges((events) => calls.push(events.length));
  // Ten commits in one synchronous stretch of JS: the dispatcher cannot call
  // into JS meanwhile, so what it queues arrives as bursts.
  for (let i = 0; i < 10; i++) db.put('tasks', { id: `burst-${i}`, title: `burst ${i}` });
  await db.flushEvents();
  assert.equal(calls.reduce((a, b) => a + b, 0), 10, `every commit arrived: ${calls}`);
  assert.ok(calls.length < 10, `in bursts, not one call per commit: ${calls}`);
  stop();
  db.close();
});

test('AppState drives foreground from its current state and each change', () => {
  const calls: boolean[] = [];
  const spy = { setForeground: (f: boolean) => calls.push(f) } as unknown as SyncClient;
  let emit: (s: string) => void = () => {};
  const stop = connectAppState(spy, {
    currentState: 'background',
    addEventListener: (_type, l) => {
      emit = l;
      return { remove: () => calls.push(true) };
    },
  });
  emit('active');
  emit('inactive');
  assert.deepEqual(calls, [false, true, false]);
  stop();
});

test('listener handles survive garbage collection until unsubscribed', async () => {
  const d = device(serverOf().url);
  const seen: number[] = [];
  const before = heldHandles();
  const unsubscribe = d.db.onChanges((events) => seen.push(events.length));
  // Nothing of ours references the handle: only the registry does.
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.equal(typeof gc, 'function', 'run node with --expose-gc');
  for (let i = 0; i < 3; i++) {
    gc!();
    await new Promise((ok) => setImmediate(ok));
  }
  d.db.create('tasks', { title: 'after gc' });
  await d.db.flushEvents();
  assert.equal(seen.length, 1, 'still subscribed');
  assert.equal(heldHandles(), before + 1);
  unsubscribe();
  unsubscribe();
  assert.equal(heldHandles(), before);
  d.db.create('tasks', { title: 'after unsubscribe' });
  await d.db.flushEvents();
  assert.equal(seen.length, 1, 'unsubscribed');
  await d.client.close();
  d.db.close();
});

test('the logger gets core lines on the JS thread, and can be unset', async () => {
  const lines: string[] = [];
  let first: () => void = () => {};
  const got = new Promise<void>((ok) => (first = ok));
  ferry.setLogger((level, target, message) => {
    lines.push(`${level} ${target} ${message}`);
    first();
  }, 'error');
  const d = device(serverOf().url);
  // A throwing change listener is caught by the core and logged at error level.
  const stop = d.db.onChanges(() => {
    throw new Error('listener bug');
  });
  d.db.create('tasks', { title: 'logged' });
  await got;
  assert.ok(lines.some((l) => l.startsWith('error ferry::events') && l.includes('change listener panicked')), `${lines}`);
  ferry.setLogger(null);
  const before = lines.length;
  d.db.create('tasks', { title: 'not logged' });
  await d.db.flushEvents();
  for (let i = 0; i < 10; i++) await new Promise((ok) => setImmediate(ok));
  assert.equal(lines.length, before, 'nothing after unset');
  stop();
  await d.client.close();
  d.db.close();
});

test('a database restored on another installation takes a new client id; its own keeps it', () => {
  const path = dbPath('restored');
  const first = Database.open(path, SCHEMA, { installationId: 'install-1' });
  const id = first.status().clientId;
  first.close();
  const copy = `${path}-copy.db`;
  copyFileSync(path, copy);
  const again = Database.open(path, SCHEMA, { installationId: 'install-1' });
  assert.equal(again.status().clientId, id);
  again.close();
  const restored = Database.open(copy, SCHEMA, { installationId: 'install-2' });
  assert.notEqual(restored.status().clientId, id);
  restored.close();
});

test('a collection damaged on the device is found by its checksum and repaired', async () => {
  const url = serverOf().url;
  const path = dbPath('repair');
  const db = Database.open(path, SCHEMA);
  const client = new Client(db, { url, tokenProvider: async () => BOB, config: { checksumIntervalMs: 0 } });
  assert.throws(
    () => new Client(db, { url, tokenProvider: async () => BOB, config: { checksumIntervalMs: 1.5 } }),
    RangeError,
  );
  const tag = uid('repair');
  await client.write([
    { op: 'create', collection: 'tasks', fields: { id: `${tag}-1`, title: tag } },
    { op: 'create', collection: 'tasks', fields: { id: `${tag}-2`, title: tag } },
  ]);
  await client.sync();
  const clean = await client.sync();
  assert.deepEqual(clean.repairs, [], 'a copy that matches needs no repair');
  assert.equal(client.status().lastRepair, null);
  // Behind the core's back, as a bad flash page would.
  execFileSync('sqlite3', [
    path,
    `PRAGMA busy_timeout = 10000; UPDATE tasks SET title = 'garbled', _version = _version + 5 WHERE id = '${tag}-1'`,
  ]);
  const report = await client.sync();
  assert.equal(report.repairs.length, 1, JSON.stringify(report.repairs));
  const r = report.repairs[0];
  assert.ok(r);
  assert.equal(r.collection, 'tasks');
  assert.equal(r.repaired, true);
  assert.equal(r.localCount, r.serverCount, 'one row at another version: same count');
  assert.equal(typeof r.at, 'number');
  assert.deepEqual(client.status().lastRepair, r);
  assert.equal(db.get('tasks', `${tag}-1`)?.title, tag, "the server's row is back");
  JSON.parse(JSON.stringify(client.status()));
  await client.close();
  db.close();
});
