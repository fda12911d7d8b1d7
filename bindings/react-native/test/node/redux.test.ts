// react-native-ferry on Node: the generated TypeScript over the real core (ubrn's
// N-API flavour), a real Redux Toolkit store, a real ferry-server.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';

import { combineReducers, configureStore, findNonSerializableValue, type UnknownAction } from '@reduxjs/toolkit';

import { changesApplied, createFerryRedux } from '../../src/redux/index';
import { FerryError, heldHandles, type Query, type Row } from '../../src/api';
import {
  ALICE,
  BOB,
  Database,
  LOOSE_SCHEMA,
  dbPath,
  device,
  makeClient,
  retainedSchema,
  SCHEMA,
  ferry,
  uid,
  useServer,
  type Device,
} from './support';

const serverOf = useServer({ before, after });

/** A Redux store over `d`, recording every action and every state. */
function reduxOver(d: Device, collections = ['tasks']) {
  const f = createFerryRedux({ db: d.db, client: d.client, collections, views: [{ collection: 'tasks' }] });
  const actions: UnknownAction[] = [];
  const recorder = () => (next: (a: unknown) => unknown) => (action: unknown) => {
    actions.push(action as UnknownAction);
    return next(action);
  };
  const store = configureStore({
    reducer: { ferry: combineReducers(f.reducer) },
    middleware: (gdm) => gdm({ serializableCheck: true, immutableCheck: true }).concat(f.middleware, recorder),
  });
  const states: ReturnType<typeof store.getState>[] = [];
  store.subscribe(() => states.push(store.getState()));
  return { f, store, actions, states };
}

const task = (state: { ferry: { collections: Record<string, { entities: Record<string, Row | undefined> }> } }, id: string) =>
  state.ferry.collections.tasks?.entities[id];

test('an optimistic write appears at once as pending, then commits as synced', async () => {
  const d = device(serverOf().url);
  const { f, store, states, actions } = reduxOver(d);
  const id = uid('opt');
  await store.dispatch(
    f.thunks.write({ ops: [{ op: 'create', collection: 'tasks', fields: { id, title: 'optimistic' } }], mode: { kind: 'optimistic' } }),
  ).unwrap();
  await d.db.flushEvents();
  const seen = states.map((s) => task(s, id)?._status).filter(Boolean);
  assert.equal(seen[0], 'pending', `first seen as pending: ${seen}`);
  assert.equal(seen.at(-1), 'synced');
  assert.ok(actions.some((a) => a.type === 'ferry/mutationCommitted'));
  assert.equal(findNonSerializableValue(store.getState()), false, 'the state is serialisable');
  assert.doesNotThrow(() => JSON.stringify(store.getState()));
  f.detach();
  await d.client.close();
  d.db.close();
});

test('a write the server rejects rolls back, and the rollback is a plain action', async () => {
  const d = device(serverOf().url, ALICE, { schema: LOOSE_SCHEMA });
  const { f, store, actions } = reduxOver(d);
  const id = uid('bad');
  const result = await store.dispatch(
    f.thunks.write({
      ops: [{ op: 'create', collection: 'tasks', fields: { id, title: 'bad', priority: 'high' } }],
      mode: { kind: 'optimistic' },
    }),
  );
  assert.equal(result.type, 'ferry/write/rejected');
  await d.db.flushEvents();
  assert.equal(task(store.getState(), id), undefined, 'rolled back out of the state');
  const rolledBack = actions.find((a) => a.type === 'ferry/mutationRolledBack') as
    | (UnknownAction & { payload: { error: { kind: string; code?: string } } })
    | undefined;
  assert.equal(rolledBack?.payload.error.kind, 'Rejected');
  assert.equal(rolledBack?.payload.error.code, 'invalid_record');
  assert.equal(store.getState().ferry.sync.lastRollback?.error.kind, 'Rejected');
  assert.equal(findNonSerializableValue(store.getState()), false);
  f.detach();
  await d.client.close();
  d.db.close();
});

test('the selectors read the state: by id, all, pending, the sync slice and the quarantine', async () => {
  const d = device(serverOf().url, ALICE, { schema: LOOSE_SCHEMA });
  const { f, store } = reduxOver(d);
  const [good, bad] = [uid('good'), uid('bad')];
  await store
    .dispatch(
      f.thunks.write({
        ops: [
          { op: 'create', collection: 'tasks', fields: { id: good, title: 'good' } },
          // Fits the loose local schema; the server refuses it.
          { op: 'create', collection: 'tasks', fields: { id: bad, title: 'bad', priority: 'high' } },
        ],
        mode: { kind: 'offlineFirst' },
      }),
    )
    .unwrap();
  await d.db.flushEvents();
  const s = f.selectors;
  assert.equal(s.byId(store.getState(), 'tasks', good)?.title, 'good');
  assert.equal(s.byId(store.getState(), 'tasks', uid('none')), undefined);
  assert.ok(s.isPending(store.getState(), 'tasks', good));
  const ids = s.all(store.getState(), 'tasks').map((r) => r.id);
  assert.ok(ids.includes(good) && ids.includes(bad), JSON.stringify(ids));
  assert.equal(s.sync(store.getState()).pending, 2);
  await d.client.sync();
  await d.db.flushEvents();
  assert.equal(s.isPending(store.getState(), 'tasks', good), false, 'pushed');
  assert.equal(s.quarantined(store.getState()), 1, 'the refused create is parked');
  assert.equal(s.sync(store.getState()).pending, 0, 'parked is counted as quarantined, not pending');
  const parked = f.quarantine();
  assert.equal(parked.length, 1);
  assert.equal(parked[0]?.record_id, bad);
  f.detach();
  await d.client.close();
  d.db.close();
});

test('an online write fails cleanly when offline, or queues, as asked', async () => {
  const d = device(serverOf().url);
  const { f, store } = reduxOver(d);
  d.client.setOnline(false);
  const failed = uid('fail');
  const r = await store.dispatch(
    f.thunks.write({ ops: [{ op: 'create', collection: 'tasks', fields: { id: failed } }], mode: { kind: 'online', whenOffline: 'fail' } }),
  );
  assert.equal(r.type, 'ferry/write/rejected');
  assert.equal((r.payload as { kind: string }).kind, 'Offline');
  assert.equal(d.db.get('tasks', failed), null, 'nothing written');
  const queued = uid('queue');
  await store
    .dispatch(
      f.thunks.write({ ops: [{ op: 'create', collection: 'tasks', fields: { id: queued } }], mode: { kind: 'online', whenOffline: 'queue' } }),
    )
    .unwrap();
  await d.db.flushEvents();
  assert.equal(task(store.getState(), queued)?._status, 'pending');
  d.client.setOnline(true);
  await d.client.sync();
  await d.db.flushEvents();
  assert.equal(task(store.getState(), queued)?._status, 'synced');
  f.detach();
  await d.client.close();
  d.db.close();
});

test("another device's changes arrive as one batched action", async () => {
  const a = device(serverOf().url, BOB);
  const b = device(serverOf().url, BOB);
  const { f, store, actions } = reduxOver(a);
  const ids = [uid('b'), uid('b'), uid('b')];
  await b.client.write(ids.map((id) => ({ op: 'create' as const, collection: 'tasks', fields: { id, title: id } })));
  await b.client.sync();
  const before = actions.length;
  await a.client.sync();
  await a.db.flushEvents();
  const applied = actions
    .slice(before)
    .filter((x) => x.type === 'ferry/changesApplied') as Array<UnknownAction & { payload: { events: Array<{ source: string; changes: Array<{ upserted: Row[] }> }> } }>;
  const remote = applied.filter((x) => x.payload.events.some((e) => e.source === 'remote'));
  assert.equal(remote.length, 1, 'one action for the publish');
  const upserted = remote[0]!.payload.events.flatMap((e) => e.changes.flatMap((c) => c.upserted.map((r) => r.id)));
  assert.deepEqual([...upserted].sort(), [...ids].sort());
  for (const id of ids) assert.equal(task(store.getState(), id)?._status, 'synced');
  f.detach();
  for (const d of [a, b]) {
    await d.client.close();
    d.db.close();
  }
});

test('the sync status moves through its transitions into the sync slice', async () => {
  const d = device(serverOf().url);
  const { f, store, actions } = reduxOver(d);
  assert.equal(store.getState().ferry.sync.status?.phase, 'idle');
  d.db.create('tasks', { id: uid('s'), title: 'status' });
  await d.client.sync();
  await d.db.flushEvents();
  const phases = actions
    .filter((a) => a.type === 'ferry/syncStatusChanged')
    .map((a) => (a as UnknownAction & { payload: { phase: string } }).payload.phase);
  assert.equal(phases.at(-1), 'idle', `${phases}`);
  assert.ok(store.getState().ferry.sync.status?.lastSyncCompletedAt, 'completed');
  assert.equal(typeof store.getState().ferry.sync.status?.pending, 'number', 'numbers, never bigint');
  d.client.setOnline(false);
  await d.db.flushEvents();
  assert.equal(store.getState().ferry.sync.status?.phase, 'offline');
  assert.equal(store.getState().ferry.sync.status?.online, false);
  f.detach();
  await d.client.close();
  d.db.close();
});

test('the sync slice shows a pull while it runs, then its progress, and a failure as lastError', { timeout: 60_000 }, async () => {
  const url = serverOf().url;
  const a = device(url);
  const tag = uid('phase');
  await a.client.write([1, 2, 3].map((i) => ({ op: 'create' as const, collection: 'tasks', fields: { id: `${tag}-${i}`, title: tag } })));
  await a.client.sync();
  // The token waits for the test: the pull has begun, and stays there.
  let release: () => void = () => {};
  const gate = new Promise<void>((ok) => (release = ok));
  const db = Database.open(dbPath('phases'), SCHEMA);
  const client = new ferry.SyncClient(db, {
    url,
    tokenProvider: async () => {
      await gate;
      return ALICE;
    },
  });
  const f = createFerryRedux({ db, client, collections: ['tasks'] });
  const store = configureStore({
    reducer: { ferry: combineReducers(f.reducer) },
    middleware: (gdm) => gdm().concat(f.middleware),
  });
  const phase = () => store.getState().ferry.sync.status?.phase;
  const pulling = new Promise<void>((ok) => {
    const stop = store.subscribe(() => {
      if (phase() === 'pulling') {
        stop();
        ok();
      }
    });
  });
  const running = client.sync();
  await pulling;
  assert.equal(db.get('tasks', `${tag}-1`), null, 'nothing published yet');
  release();
  await running;
  await db.flushEvents();
  const st = store.getState().ferry.sync;
  assert.equal(st.status?.phase, 'idle');
  assert.ok((st.status?.recordsDone ?? 0) >= 3 && (st.status?.pagesDone ?? 0) >= 1, JSON.stringify(st.status));
  assert.equal(st.lastError, null);
  f.detach();
  await client.close();
  db.close();

  // A server that cannot be reached: the failure lands in the slice.
  const down = Database.open(dbPath('down'), SCHEMA);
  const lost = new ferry.SyncClient(down, { url: 'http://127.0.0.1:9', tokenProvider: async () => ALICE });
  const g = createFerryRedux({ db: down, client: lost, collections: ['tasks'] });
  const store2 = configureStore({ reducer: { ferry: combineReducers(g.reducer) }, middleware: (gdm) => gdm().concat(g.middleware) });
  await assert.rejects(lost.sync(), (e: unknown) => e instanceof FerryError && e.kind === 'Offline');
  await down.flushEvents();
  const failed = store2.getState().ferry.sync;
  assert.ok(failed.lastError && failed.lastError.length > 0, JSON.stringify(failed));
  assert.ok(['offline', 'error'].includes(failed.status?.phase ?? ''), JSON.stringify(failed.status));
  g.detach();
  await lost.close();
  down.close();
  await a.client.close();
  a.db.close();
});

test('a token refresh goes through an async JS provider', async () => {
  const db = Database.open(dbPath('tokens'), JSON.parse(JSON.stringify((await import('./support')).SCHEMA)));
  let refreshes = 0;
  const client = new ferry.SyncClient(db, {
    url: serverOf().url,
    tokenProvider: async (refresh) => {
      if (!refresh) return 'expired';
      refreshes += 1;
      await new Promise((ok) => setImmediate(ok));
      return ALICE;
    },
  });
  await client.sync();
  assert.equal(refreshes, 1);
  const failing = new ferry.SyncClient(db, {
    url: serverOf().url,
    tokenProvider: async () => {
      throw new Error('keychain locked');
    },
  });
  await assert.rejects(failing.sync(), (e: unknown) => e instanceof FerryError && e.kind === 'TokenUnavailable');
  assert.equal(failing.status().authFailed, false, 'retried later, not a stop');
  await failing.close();
  await client.close();
  db.close();
});

test('a conflict resolver written in JS runs while JS is writing, and nothing deadlocks', { timeout: 60_000 }, async () => {
  const a = device(serverOf().url);
  const id = uid('c');
  let calls = 0;
  const b = device(serverOf().url, ALICE, {
    resolver: (_collection, local, server) => {
      calls += 1;
      // Writing from inside the resolver: the database is not locked here.
      b.db.put('tasks', { id: `${id}-side`, title: 'written by the resolver' });
      return { ...server.fields, title: `${local.title}+${server.fields.title}` };
    },
  });
  await a.client.write([{ op: 'create', collection: 'tasks', fields: { id, title: 'seed' } }]);
  await a.client.sync();
  await b.client.sync();
  a.db.update('tasks', { id, title: 'from a' });
  await a.client.sync();
  b.db.update('tasks', { id, title: 'from b' });
  // JS keeps writing while the sync (and the resolver) run.
  const syncing = b.client.sync();
  for (let i = 0; i < 20; i++) b.db.put('tasks', { id: `${id}-busy-${i}`, title: 'busy' });
  await syncing;
  assert.equal(calls, 1);
  assert.equal(b.db.get('tasks', id)?.title, 'from b+from a');
  assert.ok(b.db.get('tasks', `${id}-side`));
  for (const d of [a, b]) {
    await d.client.close();
    d.db.close();
  }
});

test('logout stops sync, closes, and wipes the database', async () => {
  const d = device(serverOf().url);
  const { f, store } = reduxOver(d);
  await store.dispatch(f.thunks.write({ ops: [{ op: 'create', collection: 'tasks', fields: { id: 'private' } }] })).unwrap();
  d.client.start();
  const path = d.db.path;
  const handlesBefore = heldHandles();
  f.detach();
  // A sync in flight when the user logs out: the client's shutdown cancels it
  // (or it finished first), and the delete that follows finds the file closed.
  const syncing = d.client.sync().then(
    () => 'done',
    (e: unknown) => (e instanceof FerryError ? e.kind : 'other'),
  );
  await ferry.logout(d.client, d.db);
  assert.ok(['done', 'Closed'].includes(await syncing), 'the running sync was cancelled or done');
  assert.equal(existsSync(path), false, 'the file is gone');
  assert.equal(existsSync(`${path}-ferry-stage`), false, 'its staging file too');
  assert.ok(heldHandles() < handlesBefore, 'listener handles released');
  // Safe when called twice (a logout button tapped again, a retry after a crash).
  await ferry.logout(d.client, d.db);
  assert.equal(existsSync(path), false);
  const again = Database.open(path, (await import('./support')).SCHEMA);
  assert.equal(again.get('tasks', 'private'), null);
  again.close();
});

test('a reload event re-runs the views of its collection, not the whole collection', async () => {
  const d = device(serverOf().url);
  const f = createFerryRedux({ db: d.db, collections: ['tasks'], views: [{ collection: 'tasks', query: { where: { column: 'done', op: 'eq', value: false } } }] });
  const actions: UnknownAction[] = [];
  const store = configureStore({
    reducer: { ferry: combineReducers(f.reducer) },
    middleware: (gdm) =>
      gdm({ serializableCheck: false, immutableCheck: false }).concat(f.middleware, () => (next: (a: unknown) => unknown) => (action: unknown) => {
        actions.push(action as UnknownAction);
        return next(action);
      }),
  });
  // One transaction past MAX_EVENT_ROWS (10,000): its event lists no rows, only `reload`.
  const rows = Array.from({ length: 10_001 }, (_, i) => ({ id: uid('r'), title: `row ${i}`, done: i % 2 === 1 }));
  d.db.put('tasks', rows);
  await d.db.flushEvents();
  const hydratedActions = actions.filter((a) => a.type === 'ferry/hydrated');
  assert.equal(hydratedActions.length, 1, 'the view re-ran once');
  const held = store.getState().ferry.collections.tasks!.ids.length;
  assert.equal(held, 5_001, 'the view (done == false), not the whole collection');
  f.detach();
  await d.client.close();
  d.db.close();
});

test('rows pruned by retention leave the Redux state, and queries say they are incomplete', async () => {
  const url = serverOf().url;
  const a = device(url, BOB);
  const tag = uid('ret');
  const day = 86_400_000;
  // `priority` holds a time: three rows ten days old, two a day ahead.
  const now = Date.now();
  const at = (p: number) => (p <= 3 ? now - 10 * day + p : now + day + p);
  await a.client.write(
    [1, 2, 3, 4, 5].map((p) => ({ op: 'create' as const, collection: 'tasks', fields: { id: `${tag}-${p}`, title: tag, priority: at(p) } })),
  );
  await a.client.sync();
  const b = device(url, BOB, { schema: retainedSchema({ max_age_ms: day }) });
  const { f, store, actions } = reduxOver(b);
  await b.client.sync();
  await b.db.flushEvents();
  const pruned = actions
    .filter((x) => x.type === 'ferry/changesApplied')
    .flatMap((x) => (x as ReturnType<typeof changesApplied>).payload.events)
    .flatMap((e) => e.changes.flatMap((c) => c.pruned));
  for (const p of [1, 2, 3]) {
    assert.ok(pruned.includes(`${tag}-${p}`), `the app heard ${tag}-${p} was pruned`);
    assert.equal(task(store.getState(), `${tag}-${p}`), undefined, 'and it left the state');
  }
  for (const p of [4, 5]) assert.ok(task(store.getState(), `${tag}-${p}`), 'the recent rows stay');
  assert.equal(b.db.queryResult('tasks').complete, false);
  const newest = b.db.queryResult('tasks', { sort: [{ column: 'priority', desc: true }], limit: 1 });
  assert.equal(newest.complete, true, 'the newest row is above the horizon');
  assert.equal(newest.rows[0]?.id, `${tag}-5`);
  const count = b.db.countResult('tasks');
  assert.equal(count.complete, false);
  assert.ok((count.serverTotal ?? 0) >= 5, `the server's total: ${count.serverTotal}`);
  assert.equal(count.local, Object.keys(store.getState().ferry.collections.tasks?.entities ?? {}).length);
  assert.deepEqual(b.db.runRetention(), {}, 'nothing left to prune');
  const anchor = b.db.anchors().find((x) => x.collection === 'tasks');
  assert.ok(anchor && anchor.pruned >= 3 && anchor.horizon !== null && anchor.horizon === at(3), JSON.stringify(anchor));
  f.detach();
  for (const d of [a, b]) {
    await d.client.close();
    d.db.close();
  }

  // Rows in the state, then pruned: the policy tightens (a new schema version)
  // and the app runs retention itself; the pruned rows leave the entity state.
  const path = dbPath('retained');
  const plain = Database.open(path, SCHEMA);
  const synced = makeClient(plain, url, undefined, BOB);
  await synced.sync();
  await synced.close();
  plain.close();
  const tight = Database.open(path, { ...retainedSchema({ max_rows: 0 }), version: SCHEMA.version + 1 });
  const g = createFerryRedux({ db: tight, collections: ['tasks'], views: [{ collection: 'tasks' }] });
  const rs = configureStore({ reducer: { ferry: combineReducers(g.reducer) }, middleware: (gdm) => gdm().concat(g.middleware) });
  await rs.dispatch(g.thunks.hydrate());
  assert.ok(task(rs.getState(), `${tag}-4`), 'hydrated with the recent rows');
  const prunedNow = tight.runRetention().tasks ?? 0;
  await tight.flushEvents();
  assert.ok(prunedNow >= 2, `pruned ${prunedNow}`);
  for (const p of [4, 5]) assert.equal(task(rs.getState(), `${tag}-${p}`), undefined, `${tag}-${p} left the state`);
  g.detach();
  tight.close();
});

test('fetchRemote reads past the horizon under the caller\'s rules, can cache into the state, and says Offline', async () => {
  const url = serverOf().url;
  const tag = uid('fetch');
  const day = 86_400_000;
  const old = Date.now() - 10 * day;
  const writer = device(url, BOB);
  await writer.client.write(
    [1, 2, 3].map((p) => ({ op: 'create' as const, collection: 'tasks', fields: { id: `${tag}-${p}`, title: tag, priority: old + p } })),
  );
  await writer.client.sync();
  const alice = device(url, ALICE);
  await alice.client.write([{ op: 'create', collection: 'tasks', fields: { id: `${tag}-alice`, title: tag, priority: old } }]);
  await alice.client.sync();

  const b = device(url, BOB, { schema: retainedSchema({ max_age_ms: day }) });
  const { f, store, actions } = reduxOver(b);
  await b.client.sync();
  await b.db.flushEvents();
  const byTag: Query = { where: { column: 'title', op: 'eq', value: tag }, sort: [{ column: 'priority', desc: true }] };
  assert.deepEqual(b.db.query('tasks', byTag), [], 'the rows are past the horizon here');
  const horizon = () => b.db.anchors().find((x) => x.collection === 'tasks')?.horizon;
  const before = horizon();
  assert.notEqual(before, null);

  const mine = [3, 2, 1].map((p) => `${tag}-${p}`);
  const fetched = await store.dispatch(f.thunks.fetchRemote({ collection: 'tasks', query: byTag })).unwrap();
  assert.deepEqual(fetched.map((r) => r.id), mine, "Bob's rows in the query's order, never Alice's");
  await b.db.flushEvents();
  assert.equal(task(store.getState(), mine[0]!), undefined, 'not cached: not in the state');
  assert.deepEqual(b.db.query('tasks', byTag), [], 'not cached: not in the database');

  const cached = await store.dispatch(f.thunks.fetchRemote({ collection: 'tasks', query: byTag, cache: true })).unwrap();
  await b.db.flushEvents();
  assert.deepEqual(cached.map((r) => r.id), mine);
  for (const id of mine) assert.equal(task(store.getState(), id)?._status, 'synced', `${id} cached into the state`);
  assert.equal(horizon(), before, 'caching does not move the horizon');
  assert.equal(b.db.queryResult('tasks', byTag).complete, false, 'and the local data stays incomplete below it');
  assert.equal(b.db.runRetention().tasks, 3, 'the next retention run prunes the cached rows again');
  await b.db.flushEvents();
  assert.equal(task(store.getState(), mine[0]!), undefined);

  // Bad queries are typed errors, refused before any request.
  const bad = await store.dispatch(
    f.thunks.fetchRemote({ collection: 'tasks', query: { where: { column: 'no_such_column', op: 'eq', value: 1 } } }),
  );
  assert.equal((bad.payload as { kind: string }).kind, 'UnknownColumn', JSON.stringify(bad.payload));
  await assert.rejects(b.client.fetchRemote('no_such_collection'), (e) => e instanceof FerryError && e.kind === 'UnknownCollection');

  // Offline, as the host says, and with the server unreachable: "not available offline".
  b.client.setOnline(false);
  const offline = await store.dispatch(f.thunks.fetchRemote({ collection: 'tasks', query: byTag }));
  assert.equal(offline.type, 'ferry/fetchRemote/rejected');
  assert.equal((offline.payload as { kind: string }).kind, 'Offline', JSON.stringify(offline.payload));
  assert.ok(actions.some((a) => a.type === 'ferry/fetchRemote/rejected'));
  const gone = device('http://127.0.0.1:1', BOB);
  await assert.rejects(gone.client.fetchRemote('tasks', byTag), (e) => e instanceof FerryError && e.kind === 'Offline');

  f.detach();
  for (const d of [writer, alice, b, gone]) {
    await d.client.close();
    d.db.close();
  }
});

test('sync subscriptions narrow and widen what syncs; evicted rows leave the state, and the types are plain', async () => {
  const url = serverOf().url;
  const tag = uid('subs');
  const a = device(url, BOB);
  const t = (id: string, project: string) => ({ op: 'create' as const, collection: 'tasks', fields: { id: `${tag}-${id}`, title: id, project } });
  await a.client.write([t('x1', `${tag}-x`), t('x2', `${tag}-x`), t('y1', `${tag}-y`)]);
  await a.client.sync();

  const b = device(url, BOB);
  assert.equal(b.db.subscriptions(), null, 'everything syncs until the first subscribe');
  const inProject = (name: string, p: string, ttlMs?: number) =>
    b.db.subscribe({ name, collection: 'tasks', where: { column: 'project', op: 'eq', value: `${tag}-${p}` }, ttlMs });
  const x = inProject('x', 'x', 60_000);
  assert.equal(typeof x.createdAt, 'number');
  assert.equal(x.expiresAt, x.createdAt + 60_000);
  assert.deepEqual(x.where, { column: 'project', op: 'eq', value: `${tag}-x` });
  assert.equal(findNonSerializableValue(x), false, 'plain data');
  const { f, store, actions } = reduxOver(b);
  await store.dispatch(f.thunks.hydrate());
  await b.client.sync();
  await b.db.flushEvents();
  const ids = () => Object.keys(store.getState().ferry.collections.tasks?.entities ?? {}).filter((id) => id.startsWith(tag)).sort();
  assert.deepEqual(ids(), [`${tag}-x1`, `${tag}-x2`]);

  inProject('y', 'y');
  await b.client.sync();
  await b.db.flushEvents();
  assert.deepEqual(ids(), [`${tag}-x1`, `${tag}-x2`, `${tag}-y1`], 'widened: backfilled');

  assert.equal(b.db.unsubscribe('x'), true);
  assert.equal(b.db.unsubscribe('x'), false);
  await b.db.flushEvents();
  assert.deepEqual(ids(), [`${tag}-y1`], 'narrowed: evicted from the state');
  const evicted = actions
    .filter((x) => x.type === 'ferry/changesApplied')
    .flatMap((x) => (x as ReturnType<typeof changesApplied>).payload.events)
    .filter((e) => e.source === 'subscriptions')
    .flatMap((e) => e.changes.flatMap((c) => c.evicted));
  assert.deepEqual(evicted.sort(), [`${tag}-x1`, `${tag}-x2`]);
  assert.deepEqual(b.db.subscriptions()?.map((s) => s.name), ['y']);

  assert.throws(
    () => b.db.subscribe({ name: 'bad', collection: 'tasks', where: { column: 'nope', op: 'eq', value: 1 } }),
    (e: unknown) => e instanceof FerryError && e.kind === 'UnknownColumn',
  );
  b.db.clearSubscriptions();
  assert.equal(b.db.subscriptions(), null);
  await b.client.sync();
  await b.db.flushEvents();
  assert.deepEqual(ids(), [`${tag}-x1`, `${tag}-x2`, `${tag}-y1`], 'everything again');
  f.detach();
  for (const d of [a, b]) {
    await d.client.close();
    d.db.close();
  }
});

test('a collection of a higher priority is published at its own checkpoint; prioritiesSynced says when', async () => {
  const url = serverOf().url;
  const tag = uid('prio');
  const a = device(url, BOB);
  await a.client.write([
    { op: 'create', collection: 'tasks', fields: { id: `${tag}-t`, title: tag } },
    { op: 'create', collection: 'projects', fields: { id: `${tag}-p`, name: tag } },
  ]);
  await a.client.sync();
  const schema = { ...SCHEMA, collections: (SCHEMA.collections as Array<{ name: string }>).map((c) => (c.name === 'projects' ? { ...c, priority: 0 } : c)) };
  const b = device(url, BOB, { schema });
  assert.deepEqual(b.db.prioritiesSynced(), {}, 'nothing synced yet');
  assert.equal(b.client.status().completedPriority, null);
  const { f, actions } = reduxOver(b, ['tasks', 'projects']);
  await b.client.sync();
  assert.equal(b.client.status().completedPriority, 3, 'the whole pull');
  await b.db.flushEvents();
  const synced = b.db.prioritiesSynced();
  assert.deepEqual(Object.keys(synced).sort(), ['0', '1', '2', '3']);
  assert.ok(Object.values(synced).every((t) => typeof t === 'number' && t > 0));
  // Two publishes: the projects' checkpoint, then the rest.
  const published = actions
    .filter((x) => x.type === 'ferry/changesApplied')
    .flatMap((x) => (x as ReturnType<typeof changesApplied>).payload.events)
    .filter((e) => e.source === 'remote')
    .map((e) => e.changes.map((c) => c.collection).sort().join(','));
  assert.deepEqual(published.slice(0, 2), ['projects', 'tasks']);
  f.detach();
  for (const d of [a, b]) {
    await d.client.close();
    d.db.close();
  }
});
