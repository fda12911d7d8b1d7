// Benchmarks of the React Native layer on Node (ubrn's N-API flavour over the
// real core, a real ferry-server). Not a test: run it by hand, figures go in
// docs/benchmarks.md ("## React Native").
//
//   scripts/bench-react-native.sh     # a release core and server, as apps ship them
//
// 1. A 10k-row change from another device: from the change listener receiving
//    the publish's event to the Redux state holding all 10k rows (one action,
//    the entity adapter), from the end of `sync()` to that state (signed), and
//    from the `sync()` call to it.
// 2. One JS write (`db.put`) to the Redux state holding it (the commit, the
//    event's hop back to JS, the reducer).

import { performance } from 'node:perf_hooks';

import { combineReducers, configureStore } from '@reduxjs/toolkit';

import { createFerryRedux } from '../src/redux/index';
import { BOB, cleanupDirs, device, releaseEventLoop, startServer, uid } from '../test/node/support';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const REPS = Number(process.env.FERRY_BENCH_RN_REPS ?? 5);
const WRITES = Number(process.env.FERRY_BENCH_RN_WRITES ?? 200);

async function main(): Promise<void> {
const server = await startServer();
try {
  const listenerToState: number[] = [];
  const syncEndToState: number[] = [];
  const syncStartToState: number[] = [];
  const syncTimes: number[] = [];
  for (let rep = 0; rep < REPS; rep++) {
    const a = device(server.url, BOB);
    const b = device(server.url, BOB);
    const f = createFerryRedux({ db: a.db, client: a.client, collections: ['tasks'] });
    // Times the JS side alone: the middleware's listener, stamped when the
    // burst's JSON reaches JS (before it is parsed).
    let received = 0;
    const register = a.db.onChanges.bind(a.db);
    a.db.onChanges = (listener) =>
      register((events) => {
        if (events.some((e) => e.changes.some((c) => c.upserted.length >= 10_000))) received = performance.now();
        listener(events);
      });
    const store = configureStore({
      reducer: { ferry: combineReducers(f.reducer) },
      middleware: (gdm) => gdm({ serializableCheck: false, immutableCheck: false }).concat(f.middleware),
    });
    await a.client.sync();
    const ids = Array.from({ length: 10_000 }, () => uid('bench'));
    await b.client.write(ids.map((id) => ({ op: 'create' as const, collection: 'tasks', fields: { id, title: id, priority: 1 } })));
    await b.client.sync();
    const last = ids.at(-1)!;
    const held = new Promise<number>((ok) => {
      const stop = store.subscribe(() => {
        if (store.getState().ferry.collections.tasks?.entities[last]) {
          stop();
          ok(performance.now());
        }
      });
    });
    const syncStart = performance.now();
    await a.client.sync();
    const syncEnd = performance.now();
    const at = await held;
    listenerToState.push(at - received);
    // Negative: the state held all 10k rows before sync() resolved.
    syncEndToState.push(at - syncEnd);
    syncStartToState.push(at - syncStart);
    syncTimes.push(syncEnd - syncStart);
    f.detach();
    for (const d of [a, b]) {
      await d.client.close();
      d.db.close();
    }
  }
  console.log(`10k-row remote change, parsed burst → Redux state: median ${median(listenerToState).toFixed(1)} ms (runs ${listenerToState.map((x) => x.toFixed(1)).join(' / ')})`);
  console.log(`10k-row remote change, end of sync() → Redux state: median ${median(syncEndToState).toFixed(1)} ms (runs ${syncEndToState.map((x) => x.toFixed(1)).join(' / ')}; negative: held before sync() resolved)`);
  console.log(`10k-row remote change, sync() call → Redux state: median ${median(syncStartToState).toFixed(1)} ms; the sync() call itself (pull 10k over HTTP, publish): median ${median(syncTimes).toFixed(1)} ms`);

  const d = device(server.url, BOB);
  const f = createFerryRedux({ db: d.db, collections: ['tasks'] });
  const store = configureStore({ reducer: { ferry: combineReducers(f.reducer) }, middleware: (gdm) => gdm().concat(f.middleware) });
  const writes: number[] = [];
  const puts: number[] = [];
  for (let i = 0; i < WRITES; i++) {
    const id = uid('w');
    const held = new Promise<number>((ok) => {
      const stop = store.subscribe(() => {
        if (store.getState().ferry.collections.tasks?.entities[id]) {
          stop();
          ok(performance.now());
        }
      });
    });
    const t0 = performance.now();
    d.db.put('tasks', { id, title: 'one write' });
    puts.push(performance.now() - t0);
    writes.push((await held) - t0);
  }
  console.log(`one JS write (db.put) → Redux state: median ${median(writes).toFixed(3)} ms over ${WRITES}; the put call alone: median ${median(puts).toFixed(3)} ms`);
  f.detach();
  await d.client.close();
  d.db.close();
} finally {
  await server.stop();
  cleanupDirs();
  releaseEventLoop();
}
}

void main();
