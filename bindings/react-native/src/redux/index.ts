// react-native-ferry/redux: Redux Toolkit state over a Ferry database.
//
// - One entity adapter per collection; rows are plain JSON, so the state passes
//   RTK's serializability check.
// - A `sync` slice: status, progress, pending and quarantined counts, last error.
// - `ferry.middleware` registers one change listener and one status listener and
//   dispatches plain, batched actions: `ferry/changesApplied` (every event of a
//   burst in one action), `ferry/syncStatusChanged`, `ferry/hydrated`, and, from
//   the write thunk, `ferry/mutationCommitted` / `ferry/mutationRolledBack`.
// - Views: the queries the app shows. Hydration at start loads them, never a
//   whole collection; an event that says `reload` re-runs the views of that
//   collection.

import {
  createAction,
  createAsyncThunk,
  createEntityAdapter,
  createSlice,
  original,
  type EntityState,
  type Middleware,
  type ThunkDispatch,
  type UnknownAction,
} from '@reduxjs/toolkit';

import {
  FerryError,
  type ChangeEvent,
  type Database,
  type FerryErrorInfo,
  type Query,
  type Row,
  type SyncClient,
  type SyncStatus,
  type Unsubscribe,
  type WriteMode,
  type WriteOp,
} from '../api';

/** A query the app shows: hydrated at start, re-run when its collection reloads. */
export type View = { collection: string; query?: Query };

export type FerryReduxOptions = {
  db: Database;
  /** Absent: local only (writes in `offlineFirst` mode, no sync slice updates). */
  client?: SyncClient;
  /** The synced collections the app keeps in Redux. */
  collections: string[];
  /** What to hydrate; default: nothing until the app asks (`hydrate`). */
  views?: View[];
};

export type SyncState = {
  status: SyncStatus | null;
  pending: number;
  quarantined: number;
  lastError: string | null;
  /** Mutations the app wrote through the thunk and the server has not confirmed. */
  inFlight: number;
  /** The last write that was rolled back, as a plain error. */
  lastRollback: { ops: WriteOp[]; error: FerryErrorInfo | { kind: 'Unknown'; detail: string } } | null;
};

export type CollectionsState = Record<string, EntityState<Row, string>>;

export type FerryState = { collections: CollectionsState; sync: SyncState };

export const changesApplied = createAction<{ events: ChangeEvent[] }>('ferry/changesApplied');
export const syncStatusChanged = createAction<SyncStatus>('ferry/syncStatusChanged');
export const hydrated = createAction<{ collection: string; rows: Row[] }>('ferry/hydrated');
export const mutationCommitted = createAction<{ ops: WriteOp[]; mode: WriteMode['kind']; rows: Array<Row | null> }>(
  'ferry/mutationCommitted',
);
export const mutationRolledBack = createAction<{
  ops: WriteOp[];
  mode: WriteMode['kind'];
  error: FerryErrorInfo | { kind: 'Unknown'; detail: string };
}>('ferry/mutationRolledBack');

const rows = createEntityAdapter<Row, string>({ selectId: (r) => r.id });

/**
 * The entity state after upserting `upserted` (whole rows, as the core sends
 * them) and removing `gone`; shares what did not change. Same result as the
 * adapter's `upsertMany` then `removeMany`, without a draft per row.
 */
function applyChange(s: EntityState<Row, string>, upserted: Row[], gone: string[]): EntityState<Row, string> {
  if (!upserted.length && !gone.length) return s;
  const entities: Record<string, Row> = { ...s.entities };
  const added: string[] = [];
  for (const r of upserted) {
    if (!(r.id in entities)) added.push(r.id);
    entities[r.id] = r;
  }
  let ids = added.length ? [...s.ids, ...added] : s.ids;
  if (gone.length) {
    const drop = new Set(gone.filter((id) => id in entities));
    if (drop.size) {
      for (const id of drop) delete entities[id];
      ids = ids.filter((id) => !drop.has(id));
    }
  }
  return { ids, entities };
}

function plainError(e: unknown): FerryErrorInfo | { kind: 'Unknown'; detail: string } {
  if (e instanceof FerryError) return e.info;
  return { kind: 'Unknown', detail: e instanceof Error ? e.message : String(e) };
}

/**
 * Builds the reducer, middleware, thunks and selectors for one database.
 * `Rows` maps each collection to its row type (`ferry schema ts` writes it), so
 * that selectors return typed rows.
 */
export function createFerryRedux<Rows extends { [collection: string]: Row } = { [collection: string]: Row }>(
  options: FerryReduxOptions,
) {
  const { db, client, collections } = options;
  const views = [...(options.views ?? [])];
  const known = new Set(collections);

  const initialCollections: CollectionsState = {};
  for (const c of collections) initialCollections[c] = rows.getInitialState();

  const collectionsSlice = createSlice({
    name: 'ferry/collections',
    initialState: initialCollections,
    reducers: {},
    extraReducers: (builder) => {
      builder
        .addCase(changesApplied, (state, { payload }) => {
          // Built as new objects from the undrafted state, not through immer: a
          // 10k-row burst would otherwise draft 10k upserts one by one.
          const base = original(state) ?? state;
          const next: CollectionsState = { ...base };
          for (const event of payload.events) {
            for (const change of event.changes) {
              const s = next[change.collection];
              if (!s) continue;
              next[change.collection] = applyChange(s, change.upserted, [
                ...change.deleted,
                ...change.evicted,
                ...change.pruned,
              ]);
            }
          }
          return next;
        })
        .addCase(hydrated, (state, { payload }) => {
          const s = state[payload.collection];
          if (s) rows.setAll(s, payload.rows);
        });
    },
  });

  const startStatus = client?.status() ?? null;
  const initialSync: SyncState = {
    status: startStatus,
    pending: startStatus?.pending ?? 0,
    quarantined: startStatus?.quarantined ?? 0,
    lastError: startStatus?.lastError ?? null,
    inFlight: 0,
    lastRollback: null,
  };

  const write = createAsyncThunk<
    Array<Row | null>,
    { ops: WriteOp[]; mode?: WriteMode },
    { rejectValue: FerryErrorInfo | { kind: 'Unknown'; detail: string } }
  >('ferry/write', async ({ ops, mode }, api) => {
    const m: WriteMode = mode ?? { kind: 'offlineFirst' };
    try {
      const written = client ? await client.write(ops, m) : db.write(ops);
      api.dispatch(mutationCommitted({ ops, mode: m.kind, rows: written }));
      return written;
    } catch (e) {
      const error = plainError(e);
      api.dispatch(mutationRolledBack({ ops, mode: m.kind, error }));
      return api.rejectWithValue(error);
    }
  });

  const syncSlice = createSlice({
    name: 'ferry/sync',
    initialState: initialSync,
    reducers: {},
    extraReducers: (builder) => {
      builder
        .addCase(syncStatusChanged, (state, { payload }) => {
          state.status = payload;
          state.pending = payload.pending;
          state.quarantined = payload.quarantined;
          state.lastError = payload.lastError;
        })
        .addCase(write.pending, (state) => {
          state.inFlight += 1;
        })
        .addCase(write.fulfilled, (state) => {
          state.inFlight -= 1;
        })
        .addCase(write.rejected, (state) => {
          state.inFlight -= 1;
        })
        .addCase(mutationRolledBack, (state, { payload }) => {
          state.lastRollback = { ops: payload.ops, error: payload.error };
          state.lastError = payload.error.detail;
        });
    },
  });

  /** Re-reads `views` of `collection` (or all views) into the state. */
  function viewRows(collection: string): Row[] {
    const byId = new Map<string, Row>();
    for (const v of views.filter((v) => v.collection === collection)) {
      for (const r of db.query(v.collection, v.query ?? {})) byId.set(r.id, r);
    }
    return [...byId.values()];
  }

  type Dispatch = ThunkDispatch<unknown, unknown, UnknownAction>;

  const hydrate = createAsyncThunk('ferry/hydrate', async (more: View[] | undefined, api) => {
    for (const v of more ?? []) views.push(v);
    const touched = new Set((more ?? views).map((v) => v.collection));
    for (const c of touched) {
      if (known.has(c)) api.dispatch(hydrated({ collection: c, rows: viewRows(c) }));
    }
  });

  /**
   * Reads past the local horizon from the server (`SyncClient.fetchRemote`).
   * Resolves with the rows; with `cache` they are also stored as synced rows,
   * and so reach the entity state through `changesApplied` like any other.
   * Rejects with the error as a plain value: `kind: 'Offline'` is "not
   * available offline".
   */
  const fetchRemote = createAsyncThunk<
    Row[],
    { collection: string; query?: Query; cache?: boolean },
    { rejectValue: FerryErrorInfo | { kind: 'Unknown'; detail: string } }
  >('ferry/fetchRemote', async ({ collection, query, cache }, api) => {
    try {
      if (!client) throw new Error('createFerryRedux: no sync client');
      return await client.fetchRemote(collection, query ?? {}, { cache });
    } catch (e) {
      return api.rejectWithValue(plainError(e));
    }
  });

  const sync = createAsyncThunk('ferry/sync', async () => {
    if (!client) throw new Error('createFerryRedux: no sync client');
    return client.sync();
  });

  let unsubscribes: Unsubscribe[] = [];

  const middleware: Middleware = (api) => {
    const dispatch = api.dispatch as Dispatch;
    unsubscribes.push(
      db.onChanges((events) => {
        dispatch(changesApplied({ events }));
        const reloads = new Set(
          events.flatMap((e) => e.changes.filter((c) => c.reload && known.has(c.collection)).map((c) => c.collection)),
        );
        for (const c of reloads) dispatch(hydrated({ collection: c, rows: viewRows(c) }));
      }),
    );
    if (client) {
      unsubscribes.push(client.onStatus((status) => dispatch(syncStatusChanged(status))));
    }
    return (next) => (action) => next(action);
  };

  /** Unregisters the middleware's listeners (logout, tests). */
  function detach(): void {
    for (const u of unsubscribes) u();
    unsubscribes = [];
  }

  const reducer = { collections: collectionsSlice.reducer, sync: syncSlice.reducer };

  type S = { ferry: FerryState };
  type Name = keyof Rows & string;
  const selectors = {
    byId: <C extends Name>(state: S, collection: C, id: string): Rows[C] | undefined =>
      state.ferry.collections[collection]?.entities[id] as Rows[C] | undefined,
    all: <C extends Name>(state: S, collection: C): Array<Rows[C]> => {
      const s = state.ferry.collections[collection];
      return (s ? rows.getSelectors().selectAll(s) : []) as Array<Rows[C]>;
    },
    isPending: (state: S, collection: Name, id: string): boolean =>
      state.ferry.collections[collection]?.entities[id]?._status === 'pending',
    sync: (state: S): SyncState => state.ferry.sync,
    quarantined: (state: S): number => state.ferry.sync.quarantined,
  };

  return {
    /** Mount as `ferry`: `configureStore({ reducer: { ferry: combineReducers(ferry.reducer) } })`. */
    reducer,
    middleware,
    detach,
    thunks: { write, hydrate, sync, fetchRemote },
    selectors,
    /** The quarantined mutations, read from the database (not kept in Redux). */
    quarantine: () => db.quarantine(),
  };
}

export type FerryRedux = ReturnType<typeof createFerryRedux>;
