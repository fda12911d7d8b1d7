// The hand-written TypeScript API of react-native-ferry, over the bindings that
// uniffi-bindgen-react-native generates (src/generated/ferry.ts).
//
// What it adds to the generated layer, for a React / Redux Toolkit app:
// - plain, serialisable values only: rows and events are parsed JSON, every
//   count is a `number` (never a `bigint`), maps are objects;
// - discriminated unions (`kind`) for write modes, statuses and errors;
// - listeners return an unsubscribe function, and their handles are held in a
//   registry, so a garbage-collected handle never silently unsubscribes;
// - async host callbacks: the token provider returns a Promise.
//
// It is flavour-neutral: `bindFerry(native)` takes the generated module, the JSI
// one in an app (src/index.tsx), the N-API one in the Node tests.

import type * as Gen from './generated/ferry';

/** The generated module (either flavour: the public API is the same). */
export type NativeFerry = typeof Gen;

// --- values -------------------------------------------------------------------

/** A JSON value as stored in a column. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A record as the app sees it: its columns plus the bookkeeping fields. */
export type Row = {
  id: string;
  _status: 'pending' | 'synced';
  _version: number | null;
  [column: string]: Json;
};

/** Column values of a write; `id` optional on create (a UUIDv7 is made). */
export type Fields = { id?: string; [column: string]: Json | undefined };

export type WriteOp =
  | { op: 'create'; collection: string; fields: Fields }
  | { op: 'update'; collection: string; fields: Fields & { id: string } }
  | { op: 'put'; collection: string; fields: Fields & { id: string } }
  | { op: 'delete'; collection: string; id: string };

export type WriteMode =
  | { kind: 'offlineFirst' }
  | { kind: 'optimistic' }
  | { kind: 'online'; whenOffline: 'queue' | 'fail' };

export type ChangeSource = 'local' | 'remote' | 'rollback' | 'retention' | 'subscriptions' | 'repair';

export type CollectionChange = {
  collection: string;
  upserted: Row[];
  /** Gone everywhere. */
  deleted: string[];
  /** Gone from this device only: left what it syncs, still on the server. */
  evicted: string[];
  /** Gone from this device only, by its retention policy: still on the server, beyond the horizon. */
  pruned: string[];
  /**
   * Still here although it left what this device syncs (a server eviction or a
   * narrowed subscription): it has pending local changes, kept with them until
   * its push is answered; then it is evicted if still outside.
   */
  kept: string[];
  /** Too many rows to list: re-read the views of this collection. */
  reload: boolean;
};

/** One committed transaction. */
export type ChangeEvent = { source: ChangeSource; changes: CollectionChange[] };

export type SyncPhase = 'idle' | 'pulling' | 'publishing' | 'pushing' | 'offline' | 'error';

export type SyncStatus = {
  phase: SyncPhase;
  pagesDone: number;
  recordsDone: number;
  bytesDone: number;
  /** Rows the server says exist in the pulled collections, when it tells. */
  serverTotal: number | null;
  /** Rows this pull is expected to bring (a first sync: the server's total); null when unknown. */
  recordsExpected: number | null;
  /**
   * The pull running (or last run) has published everything of this priority
   * and the higher ones (0 first, 3 the lowest): set at each priority
   * checkpoint, 3 once a pull completes. Null until then; `db.prioritiesSynced()`
   * keeps the same across restarts.
   */
  completedPriority: number | null;
  pending: number;
  quarantined: number;
  lastError: string | null;
  authFailed: boolean;
  lastSyncCompletedAt: number | null;
  online: boolean;
  /** The last collection found to differ from the server's checksum, and whether its repair mended it. */
  lastRepair: Repair | null;
};

/**
 * A collection whose rows differed from the server's checksum (an integrity
 * check): how many rows this device held and the server holds, and whether
 * the repair (the collection pulled again) made them match.
 */
export type Repair = {
  collection: string;
  localCount: number;
  serverCount: number;
  repaired: boolean;
  /** When it was found (ms). */
  at: number;
};

export type SyncReport = {
  pages: number;
  pulled: number;
  skipped: number;
  pushedApplied: number;
  pushedConflicts: number;
  pushedRejected: number;
  pushedRetried: number;
  /**
   * The pull stopped once everything of this priority and the higher ones was
   * synced, because the network is metered (`meteredPriority`); the rest
   * follows on an unmetered network. Null: it ran to the end.
   */
  deferredAfter: number | null;
  /** Collections whose checksum differed from the server's in this sync. */
  repairs: Repair[];
};

/** What kind of network the device is on. */
export type NetworkKind = 'unknown' | 'wifi' | 'cellular' | 'ethernet' | 'other';

/**
 * What the host knows of the network (`SyncClient.setNetwork`; `connectNetInfo`
 * passes NetInfo's). A change between two known kinds starts adaptive sizes
 * over; a round trip raises their time target to ten round trips; `metered`
 * holds back what `meteredPriority` defers.
 */
export type NetworkHints = { kind?: NetworkKind; metered?: boolean; rttMs?: number | null };

export type StoreStatus = {
  schemaVersion: number;
  clientId: string;
  records: Record<string, number>;
  pending: number;
  quarantined: number;
};

/** What exists on the server beyond what this device holds, for one collection. */
/**
 * A sync subscription: the records of `collection`, in `scope` when set, that
 * match `where` (a query's filter) when set. With `ttlMs`, it expires that long
 * after it was last subscribed.
 */
export type SyncSubscription = {
  name: string;
  collection: string;
  scope?: string;
  where?: Filter;
  ttlMs?: number;
};

/** A live sync subscription, as stored. */
export type ActiveSyncSubscription = SyncSubscription & {
  /** When it expires (ms since the epoch); null: never. */
  expiresAt: number | null;
  createdAt: number;
};

export type Anchor = {
  collection: string;
  /** The server's total at the last pull that reported it. */
  serverTotal: number | null;
  localCount: number;
  updatedAt: number | null;
  /** Rows whose retention column is at or below it may be missing locally; null: nothing pruned. */
  horizon: number | null;
  pruned: number;
};

export type OutboxEntry = {
  seq: number;
  mutation_id: string;
  collection: string;
  record_id: string;
  op: 'create' | 'update' | 'delete';
  state: string;
  last_error?: string | null;
  [key: string]: Json | undefined;
};

export type SyncConfig = {
  pageSize?: number;
  pushBatch?: number;
  pushDebounceMs?: number;
  collections?: string[] | null;
  /** Adaptive pull pages: start at `pageSize`, aim at `targetMs` per page, within the bounds. */
  pageSizing?: Sizing | null;
  /** Adaptive push batches: the same, in mutations, starting at `pushBatch`. */
  pushSizing?: Sizing | null;
  /**
   * On a metered network, a pull stops once everything of this priority and
   * the higher ones is synced (priorities are the schema's, 0 first); the rest
   * waits for an unmetered one. Null: no cap.
   */
  meteredPriority?: number | null;
  /**
   * Check the collections synced whole against the server's checksums, and
   * repair one that differs (default true; `SyncReport.repairs`, `SyncStatus.lastRepair`).
   */
  checksums?: boolean;
  /** How often at most a pull checks (default one hour; 0: every pull). */
  checksumIntervalMs?: number;
};

/** Bounds and time target of an adaptive size (rows of a pull page, or mutations of a push batch). */
export type Sizing = { targetMs?: number; minRows?: number; maxRows?: number };

/** The query language of the core (docs/architecture.md, queries). */
export type Query = {
  where?: Filter;
  sort?: Array<{ column: string; desc?: boolean }>;
  limit?: number;
  offset?: number;
};

/** A condition, or `and`/`or` of filters (docs/protocol.md, the filter language). */
export type Filter =
  | {
      column: string;
      op: 'eq' | 'ne' | 'lt' | 'lte' | 'gt' | 'gte' | 'in' | 'not_in' | 'like' | 'is_null' | 'is_not_null';
      value?: Json;
    }
  | { and: Filter[] }
  | { or: Filter[] };

// --- errors -------------------------------------------------------------------

/** Every failure, as a plain object (safe in Redux state and in `JSON.stringify`). */
export type FerryErrorInfo =
  | { kind: 'InvalidInput' | 'MalformedJson' | 'Schema' | 'Offline' | 'Unauthorized' | 'TokenUnavailable' | 'Closed' | 'Internal'; detail: string }
  | { kind: 'UnknownCollection'; collection: string; detail: string }
  | { kind: 'UnknownColumn' | 'WrongType'; collection: string; column: string; detail: string }
  | { kind: 'TooLarge'; limit: number; detail: string }
  | { kind: 'NotFound' | 'AlreadyExists' | 'Conflict'; collection: string; id: string; detail: string }
  | { kind: 'Rejected'; code: string; detail: string }
  | { kind: 'Server'; status: number; code: string; detail: string };

export type FerryErrorKind = FerryErrorInfo['kind'];

/** What every Ferry call throws: `info` holds the typed fields. */
export class FerryError extends Error {
  readonly info: FerryErrorInfo;
  constructor(info: FerryErrorInfo) {
    super(`${info.kind}: ${info.detail}`);
    this.name = 'FerryError';
    this.info = info;
  }
  get kind(): FerryErrorKind {
    return this.info.kind;
  }
}

// --- conversions ----------------------------------------------------------------

/** A `bigint` from the bindings as a `number`; counts and times fit in 2^53. */
export const num = (v: bigint | number): number => (typeof v === 'bigint' ? Number(v) : v);

const optNum = (v: bigint | number | undefined | null): number | null =>
  v === undefined || v === null ? null : num(v);

function toInfo(native: NativeFerry, e: unknown): FerryErrorInfo | undefined {
  if (!native.FerryError.instanceOf(e)) return undefined;
  const err = e as unknown as { tag: string; inner: Record<string, unknown> };
  const inner: Record<string, unknown> = { ...err.inner };
  for (const k of Object.keys(inner)) {
    if (typeof inner[k] === 'bigint') inner[k] = Number(inner[k]);
  }
  return { kind: err.tag, ...inner } as FerryErrorInfo;
}

/** Runs a binding call, turning its errors into [`FerryError`]. */
function call<T>(native: NativeFerry, f: () => T): T {
  try {
    return f();
  } catch (e) {
    const info = toInfo(native, e);
    throw info ? new FerryError(info) : e;
  }
}

async function callAsync<T>(native: NativeFerry, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    const info = toInfo(native, e);
    throw info ? new FerryError(info) : e;
  }
}

const PHASES: Record<string, SyncPhase> = {
  Idle: 'idle',
  Pulling: 'pulling',
  Publishing: 'publishing',
  Pushing: 'pushing',
  Offline: 'offline',
  Error: 'error',
};

function syncStatus(native: NativeFerry, s: Gen.SyncStatus): SyncStatus {
  return {
    phase: PHASES[native.SyncPhase[s.phase] as string] ?? 'error',
    pagesDone: num(s.pagesDone),
    recordsDone: num(s.recordsDone),
    bytesDone: num(s.bytesDone),
    serverTotal: optNum(s.serverTotal),
    recordsExpected: optNum(s.recordsExpected),
    completedPriority: s.completedPriority ?? null,
    pending: num(s.pending),
    quarantined: num(s.quarantined),
    lastError: s.lastError ?? null,
    authFailed: s.authFailed,
    lastSyncCompletedAt: optNum(s.lastSyncCompletedAt),
    online: s.online,
    lastRepair: s.lastRepair ? repair(s.lastRepair) : null,
  };
}

function repair(r: Gen.Repair): Repair {
  return {
    collection: r.collection,
    localCount: num(r.localCount),
    serverCount: num(r.serverCount),
    repaired: r.repaired,
    at: num(r.at),
  };
}

function syncReport(r: Gen.SyncReport): SyncReport {
  return {
    pages: num(r.pages),
    pulled: num(r.pulled),
    skipped: num(r.skipped),
    pushedApplied: num(r.pushedApplied),
    pushedConflicts: num(r.pushedConflicts),
    pushedRejected: num(r.pushedRejected),
    pushedRetried: num(r.pushedRetried),
    deferredAfter: r.deferredAfter ?? null,
    repairs: r.repairs.map(repair),
  };
}

function writeMode(native: NativeFerry, m: WriteMode): Gen.WriteMode {
  switch (m.kind) {
    case 'offlineFirst':
      return new native.WriteMode.OfflineFirst();
    case 'optimistic':
      return new native.WriteMode.Optimistic();
    case 'online':
      return new native.WriteMode.Online({
        whenOffline: m.whenOffline === 'queue' ? native.OfflineBehavior.Queue : native.OfflineBehavior.Fail,
      });
  }
}

function toSizing(native: NativeFerry, s: Sizing | null | undefined): Gen.PageSizing | undefined {
  return s
    ? native.PageSizing.create({
        ...(s.targetMs === undefined ? {} : { targetMs: BigInt(s.targetMs) }),
        ...(s.minRows === undefined ? {} : { minRows: s.minRows }),
        ...(s.maxRows === undefined ? {} : { maxRows: s.maxRows }),
      })
    : undefined;
}

function fromActive(a: Gen.ActiveSyncSubscription): ActiveSyncSubscription {
  const s = a.subscription;
  return {
    name: s.name,
    collection: s.collection,
    ...(s.scope === undefined ? {} : { scope: s.scope }),
    ...(s.filterJson === undefined ? {} : { where: JSON.parse(s.filterJson) as Filter }),
    ...(s.ttlMs === undefined ? {} : { ttlMs: num(s.ttlMs) }),
    expiresAt: optNum(a.expiresAt),
    createdAt: num(a.createdAt),
  };
}

function parseEvents(json: string): ChangeEvent[] {
  const events = JSON.parse(json) as Array<Omit<ChangeEvent, 'changes'> & { changes: Array<Partial<CollectionChange>> }>;
  return events.map((e) => ({
    source: e.source,
    changes: e.changes.map((c) => ({
      collection: c.collection ?? '',
      upserted: c.upserted ?? [],
      deleted: c.deleted ?? [],
      evicted: c.evicted ?? [],
      pruned: c.pruned ?? [],
      kept: c.kept ?? [],
      reload: c.reload ?? false,
    })),
  }));
}

// --- handles ------------------------------------------------------------------

/** Stops a listener. Idempotent. */
export type Unsubscribe = () => void;

/** A native object: destroying it releases the Rust side now, not at GC. */
type Destroyable = { uniffiDestroy?: () => void };

type Handle = { cancel(): void } & Destroyable;

/**
 * Holds every live listener handle: a handle that only the app's closure knew
 * would be garbage-collected (Hermes collects early in release builds), and a
 * collected handle unsubscribes. The unsubscribe function releases it.
 */
const registry = new Set<Handle>();

function hold(handle: Handle): Unsubscribe {
  registry.add(handle);
  return () => {
    if (registry.delete(handle)) {
      handle.cancel();
      handle.uniffiDestroy?.();
    }
  };
}

/** The listeners one object registered, released together when it closes. */
class OwnedListeners {
  private readonly live = new Set<Unsubscribe>();

  /** Holds `handle` (see [`hold`]); the returned function releases it once. */
  add(handle: Handle): Unsubscribe {
    const release = hold(handle);
    const once = () => {
      this.live.delete(once);
      release();
    };
    this.live.add(once);
    return once;
  }

  releaseAll(): void {
    for (const u of [...this.live]) u();
  }
}

/** How many listener handles are held (for tests and leak checks). */
export const heldHandles = (): number => registry.size;

// --- the API --------------------------------------------------------------------

/** Supplies bearer tokens; `refresh` is true after the server refused the last one. */
export type TokenProvider = (refresh: boolean) => Promise<string>;

/**
 * Merges a record changed both locally and on the server: gets the local row
 * (with `_changed`, its pending columns) and the server's `{id, version,
 * fields}`, returns the merged fields. Never called while the database is
 * locked: it may read or write the database. A throw gives way to the merge rule.
 */
export type ConflictResolver = (
  collection: string,
  local: Row & { _changed: string[] },
  server: { id: string; version: number; fields: Record<string, Json> },
) => Record<string, Json>;

export type SyncClientOptions = {
  url: string;
  tokenProvider: TokenProvider;
  config?: SyncConfig;
  resolver?: ConflictResolver;
};

export type Ferry = ReturnType<typeof bindFerry>;

/** The API over one generated module. */
export function bindFerry(native: NativeFerry) {
  class Database {
    /** @internal */
    readonly raw: Gen.FerryDatabaseLike & Destroyable;
    readonly path: string;
    private closed = false;
    private readonly listeners = new OwnedListeners();

    private constructor(raw: Gen.FerryDatabaseLike, path: string) {
      this.raw = raw;
      this.path = path;
    }

    /**
     * Opens (creating or migrating) the database at `path` with a schema.
     * `installationId`: an id of this app install kept outside every backup (a
     * file in Android's `noBackupFilesDir`, or one excluded from iCloud backup):
     * a database restored from a backup or copied from another device then
     * takes a new client id, and still receives the first device's writes.
     */
    static open(path: string, schema: object | string, options: { installationId?: string } = {}): Database {
      const json = typeof schema === 'string' ? schema : JSON.stringify(schema);
      const { installationId } = options;
      return new Database(
        call(native, () =>
          installationId === undefined
            ? native.FerryDatabase.open(path, json)
            : native.FerryDatabase.openForInstallation(path, json, installationId),
        ),
        path,
      );
    }

    /** A batch of writes in one transaction: all or none; the written rows. */
    write(ops: WriteOp[]): Array<Row | null> {
      return JSON.parse(call(native, () => this.raw.write(JSON.stringify(ops))));
    }

    /** Creates one record, or many in one transaction (an array). */
    create(collection: string, fields: Fields): Row;
    create(collection: string, fields: Fields[]): Row[];
    create(collection: string, fields: Fields | Fields[]): Row | Row[] {
      return JSON.parse(call(native, () => this.raw.create(collection, JSON.stringify(fields))));
    }

    /** Updates the given columns of one record, or of many (an array). */
    update(collection: string, fields: Fields & { id: string }): Row;
    update(collection: string, fields: Array<Fields & { id: string }>): Row[];
    update(collection: string, fields: (Fields & { id: string }) | Array<Fields & { id: string }>): Row | Row[] {
      return JSON.parse(call(native, () => this.raw.update(collection, JSON.stringify(fields))));
    }

    /** Creates or replaces one record, or many (an array). */
    put(collection: string, fields: Fields & { id: string }): Row;
    put(collection: string, fields: Array<Fields & { id: string }>): Row[];
    put(collection: string, fields: (Fields & { id: string }) | Array<Fields & { id: string }>): Row | Row[] {
      return JSON.parse(call(native, () => this.raw.put(collection, JSON.stringify(fields))));
    }

    delete(collection: string, ids: string[]): void {
      call(native, () => this.raw.delete_(collection, ids));
    }

    get(collection: string, id: string): Row | null {
      const json = call(native, () => this.raw.get(collection, id));
      return json === undefined ? null : JSON.parse(json);
    }

    query(collection: string, query: Query = {}): Row[] {
      return JSON.parse(call(native, () => this.raw.query(collection, JSON.stringify(query))));
    }

    count(collection: string, query: Query = {}): number {
      return num(call(native, () => this.raw.count(collection, JSON.stringify(query))));
    }

    /**
     * As `query`, saying whether the result is complete: `complete: false`
     * means rows beyond the collection's horizon (pruned by its retention
     * policy) may match and are not on this device.
     */
    queryResult(collection: string, query: Query = {}): { rows: Row[]; complete: boolean } {
      return JSON.parse(call(native, () => this.raw.queryResult(collection, JSON.stringify(query))));
    }

    /** As `count`, with completeness and, for a count of the whole collection, the server's total. */
    countResult(collection: string, query: Query = {}): { local: number; serverTotal: number | null; complete: boolean } {
      const r = call(native, () => this.raw.countResult(collection, JSON.stringify(query)));
      return { local: num(r.local), serverTotal: optNum(r.serverTotal), complete: r.complete };
    }

    /** Prunes every collection by its retention policy now (a sync does it at each publish). */
    runRetention(): Record<string, number> {
      const pruned = call(native, () => this.raw.runRetention());
      return Object.fromEntries([...pruned].map(([c, n]) => [c, num(n)]));
    }

    /**
     * Adds a sync subscription, or replaces the one of its name (renewing its
     * TTL). From the first one on, the device syncs only what its subscriptions
     * cover: rows this uncovers are evicted now (those with pending changes are
     * `kept` until their push is answered), and the next sync backfills only
     * what it adds.
     */
    subscribe(subscription: SyncSubscription): ActiveSyncSubscription {
      const s = subscription;
      return fromActive(
        call(native, () =>
          this.raw.subscribe({
            name: s.name,
            collection: s.collection,
            scope: s.scope,
            filterJson: s.where === undefined ? undefined : JSON.stringify(s.where),
            ttlMs: s.ttlMs === undefined ? undefined : BigInt(s.ttlMs),
          }),
        ),
      );
    }

    /** Removes a sync subscription, evicting what only it covered; whether it existed. */
    unsubscribe(name: string): boolean {
      return call(native, () => this.raw.unsubscribe(name));
    }

    /** Removes every sync subscription: the device syncs every collection in full again. */
    clearSubscriptions(): void {
      call(native, () => this.raw.clearSubscriptions());
    }

    /** The live sync subscriptions by name; null while the device syncs everything. */
    subscriptions(): ActiveSyncSubscription[] | null {
      const subs = call(native, () => this.raw.subscriptions());
      return subs === undefined ? null : subs.map(fromActive);
    }

    /**
     * When each priority (0 first, to 3) was last published complete (ms since
     * the epoch): at its own checkpoint during a pull, or at the end of one. A
     * priority never synced is absent: open a screen once its priority is here.
     */
    prioritiesSynced(): Record<number, number> {
      const m = call(native, () => this.raw.prioritiesSynced());
      return Object.fromEntries([...m].map(([p, t]) => [p, num(t)]));
    }

    outbox(): OutboxEntry[] {
      return JSON.parse(call(native, () => this.raw.outbox()));
    }

    quarantine(): OutboxEntry[] {
      return JSON.parse(call(native, () => this.raw.quarantine()));
    }

    discardQuarantined(mutationId: string): void {
      call(native, () => this.raw.discardQuarantined(mutationId));
    }

    anchors(): Anchor[] {
      return call(native, () => this.raw.anchors()).map((a) => ({
        collection: a.collection,
        serverTotal: optNum(a.serverTotal),
        localCount: num(a.localCount),
        updatedAt: optNum(a.updatedAt),
        horizon: a.horizon ?? null,
        pruned: num(a.pruned),
      }));
    }

    status(): StoreStatus {
      const s = call(native, () => this.raw.status());
      const records: Record<string, number> = {};
      for (const [k, v] of s.records) records[k] = num(v);
      return {
        schemaVersion: s.schemaVersion,
        clientId: s.clientId,
        records,
        pending: num(s.pending),
        quarantined: num(s.quarantined),
      };
    }

    /** Every committed change, one call per burst of transactions. */
    onChanges(listener: (events: ChangeEvent[]) => void): Unsubscribe {
      const handle = this.raw.addChangeListener({
        onChanges: (json: string) => listener(parseEvents(json)),
      });
      return this.listeners.add(handle);
    }

    /** A query's rows now, then after each burst of commits touching `collection`. */
    observe(collection: string, query: Query, listener: (rows: Row[]) => void): Unsubscribe {
      const handle = call(native, () =>
        this.raw.observe(collection, JSON.stringify(query), {
          onResult: (json: string) => listener(JSON.parse(json)),
        }),
      );
      return this.listeners.add(handle);
    }

    /** Resolves once every change committed before it reached the listeners. */
    flushEvents(): Promise<void> {
      return this.raw.flushEvents();
    }

    /** Unregisters its listeners and releases the native handle. */
    close(): void {
      if (this.closed) return;
      this.closed = true;
      this.listeners.releaseAll();
      this.raw.uniffiDestroy?.();
    }
  }

  class SyncClient {
    /** @internal */
    readonly raw: Gen.FerrySyncClientLike & Destroyable;
    private readonly listeners = new OwnedListeners();
    private closing: Promise<void> | null = null;

    constructor(db: Database, options: SyncClientOptions) {
      const defaults = native.defaultSyncConfig();
      const c = options.config ?? {};
      const config: Gen.SyncConfig = {
        pageSize: c.pageSize ?? defaults.pageSize,
        pushBatch: c.pushBatch ?? defaults.pushBatch,
        pushDebounceMs: c.pushDebounceMs === undefined ? defaults.pushDebounceMs : BigInt(c.pushDebounceMs),
        collections: c.collections ?? undefined,
        // The core's defaults fill what the app leaves out.
        pageSizing: toSizing(native, c.pageSizing),
        pushSizing: toSizing(native, c.pushSizing),
        meteredPriority: c.meteredPriority ?? undefined,
        checksums: c.checksums ?? defaults.checksums,
        checksumIntervalMs:
          c.checksumIntervalMs === undefined ? defaults.checksumIntervalMs : BigInt(c.checksumIntervalMs),
      };
      const tokens = {
        token: async (refresh: boolean): Promise<string> => {
          try {
            return await options.tokenProvider(refresh);
          } catch (e) {
            if (native.HostError.instanceOf(e)) throw e;
            throw new native.HostError.Failed({ reason: e instanceof Error ? e.message : String(e) });
          }
        },
      };
      const resolver = options.resolver;
      this.raw = call(native, () =>
        resolver
          ? native.FerrySyncClient.withResolver(db.raw, options.url, tokens, config, {
              resolve: (collection: string, localJson: string, serverJson: string): string =>
                JSON.stringify(resolver(collection, JSON.parse(localJson), JSON.parse(serverJson))),
            })
          : new native.FerrySyncClient(db.raw, options.url, tokens, config),
      );
    }

    /** Pull, publish, push. Joins a sync already running. */
    async sync(): Promise<SyncReport> {
      return syncReport(await callAsync(native, () => this.raw.sync()));
    }

    /** A batch of writes in `mode`; the written rows. */
    async write(ops: WriteOp[], mode: WriteMode = { kind: 'offlineFirst' }): Promise<Array<Row | null>> {
      const json = await callAsync(native, () => this.raw.write(JSON.stringify(ops), writeMode(native, mode)));
      return JSON.parse(json);
    }

    async pushAll(): Promise<number> {
      return num(await callAsync(native, () => this.raw.pushAll()));
    }

    /**
     * Reads `query` from the server, past the local horizon, under the same
     * auth and sync rules as a pull; local pending edits are laid over the rows.
     * With `cache`, the rows are kept as synced rows (the horizon does not move;
     * the next retention run prunes them again). Offline, or with the server
     * unreachable, it rejects with a `FerryError` of kind `Offline`: show "not
     * available offline".
     */
    async fetchRemote(collection: string, query: Query = {}, options: { cache?: boolean } = {}): Promise<Row[]> {
      const json = await callAsync(native, () =>
        this.raw.fetchRemote(collection, JSON.stringify(query), options.cache ?? false),
      );
      return JSON.parse(json);
    }

    status(): SyncStatus {
      return syncStatus(native, this.raw.status());
    }

    /** Every status change (the latest one after a burst), on the JS thread. */
    onStatus(listener: (status: SyncStatus) => void): Unsubscribe {
      const handle = this.raw.addStatusListener({
        onStatus: (s: Gen.SyncStatus) => listener(syncStatus(native, s)),
      });
      return this.listeners.add(handle);
    }

    setOnline(online: boolean): void {
      this.raw.setOnline(online);
    }

    setForeground(foreground: boolean): void {
      this.raw.setForeground(foreground);
    }

    /** What the host last said of the network. */
    network(): Required<NetworkHints> {
      const h = this.raw.network();
      const kind = (native.NetworkKind[h.kind] as string | undefined)?.toLowerCase() as NetworkKind | undefined;
      return { kind: kind ?? 'unknown', metered: h.metered, rttMs: h.rttMs ?? null };
    }

    /** What network the device is on (reachability stays `setOnline`'s). */
    setNetwork(hints: NetworkHints): void {
      const kinds: Record<NetworkKind, Gen.NetworkKind> = {
        unknown: native.NetworkKind.Unknown,
        wifi: native.NetworkKind.Wifi,
        cellular: native.NetworkKind.Cellular,
        ethernet: native.NetworkKind.Ethernet,
        other: native.NetworkKind.Other,
      };
      const rtt = hints.rttMs;
      if (rtt != null && !(Number.isInteger(rtt) && rtt >= 0 && rtt <= 0xffffffff)) {
        throw new RangeError(`rttMs must be a whole number of ms, not ${rtt}`);
      }
      this.raw.setNetwork({
        kind: kinds[hints.kind ?? 'unknown'] ?? native.NetworkKind.Unknown,
        metered: hints.metered ?? false,
        rttMs: rtt ?? undefined,
      });
    }

    /** Background sync: debounced pushes, a sync on reconnect and on foreground. */
    start(): void {
      this.raw.start();
    }

    stop(): void {
      this.raw.stop();
    }

    /**
     * Shuts the client down and releases it: stops background sync, cancels a
     * sync or push running now (it rejects with `FerryError` kind `Closed`;
     * nothing is half-written), and resolves once none of the client's work is
     * in flight, so that the database can be closed and deleted next. Calling it
     * again returns the same promise.
     */
    close(): Promise<void> {
      if (!this.closing) {
        this.listeners.releaseAll();
        this.closing = callAsync(native, () => this.raw.shutdown()).finally(() => this.raw.uniffiDestroy?.());
      }
      return this.closing;
    }
  }

  /**
   * Logout: shut the sync client down (awaited: a running sync is cancelled and
   * its database work ends), close the database, then delete the database file,
   * in that order. Fails with `InvalidInput`, deleting nothing, if another handle
   * of the database stays open.
   */
  async function logout(client: SyncClient | null, db: Database): Promise<void> {
    await client?.close();
    db.close();
    call(native, () => native.deleteDatabase(db.path));
  }

  const LEVELS: LogLevel[] = ['error', 'warn', 'info', 'debug', 'trace'];

  /**
   * Sends the core's log lines at `level` or more severe to `logger` (on the JS
   * thread, through a bounded queue); `null` unsets it and releases it.
   */
  function setLogger(logger: ((level: LogLevel, target: string, message: string) => void) | null, level: LogLevel = 'info'): void {
    if (!logger) {
      native.unsetLogger();
      return;
    }
    const nativeLevel = LEVELS.indexOf(level) as Gen.LogLevel;
    call(native, () =>
      native.setLogger(
        { log: (l: Gen.LogLevel, target: string, message: string) => logger(LEVELS[l] ?? 'info', target, message) },
        nativeLevel,
      ),
    );
  }

  return { Database, SyncClient, logout, setLogger, FerryError };
}

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace';

export type Database = ReturnType<Ferry['Database']['open']>;
export type SyncClient = InstanceType<Ferry['SyncClient']>;
