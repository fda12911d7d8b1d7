// Test support: the real core through ubrn's N-API flavour, and a real
// ferry-server started by the tests (no mock).

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import * as generated from './generated/index';
import { bindFerry, type Database as Db, type NativeFerry } from '../../src/api';

export const ferry = bindFerry(generated as unknown as NativeFerry);
export const { Database, SyncClient } = ferry;

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../../..');

export const ALICE = 'alice-dev-token';
export const BOB = 'bob-dev-token';

const tasks = JSON.parse(readFileSync(join(repo, 'examples/tasks.schema.json'), 'utf8'));
export const SCHEMA = tasks;
/** `priority` as a string locally: the server (integer) rejects such writes. */
export const LOOSE_SCHEMA = {
  ...tasks,
  collections: tasks.collections.map((c: { name: string; columns: Array<{ name: string }> }) =>
    c.name !== 'tasks'
      ? c
      : {
          ...c,
          columns: c.columns.map((col) =>
            col.name === 'priority' ? { name: 'priority', type: 'string', nullable: true } : col,
          ),
        },
  ),
};

/** `tasks` kept by a retention policy on `priority` (a time in ms here). */
export const retainedSchema = (retention: { max_rows?: number; max_age_ms?: number }) => ({
  ...tasks,
  collections: tasks.collections.map((c: { name: string }) =>
    c.name !== 'tasks' ? c : { ...c, retention: { column: 'priority', ...retention } },
  ),
});

/** Listener callbacks do not keep Node's event loop alive: this timer does. */
const keepAlive = setInterval(() => {}, 60_000);
export const releaseEventLoop = () => clearInterval(keepAlive);

export type Server = { url: string; stop: () => Promise<void> };

/** Starts `ferry-server` (`FERRY_SERVER_BIN`, or the debug build) on a free port. */
export async function startServer(): Promise<Server> {
  const bin = process.env.FERRY_SERVER_BIN ?? join(repo, 'target/debug/ferry-server');
  const dir = mkdtempSync(join(tmpdir(), 'ferry-rn-server-'));
  const child: ChildProcess = spawn(bin, ['--listen', '127.0.0.1:0', '--database-url', `sqlite:${join(dir, 'server.db')}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const url = await new Promise<string>((ok, fail) => {
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^ferry-server listening on (http\S+)$/m.exec(out);
      if (m) ok(m[1]!);
    });
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.on('exit', (code) => fail(new Error(`ferry-server exited (${code}): ${err}`)));
    child.on('error', fail);
  });
  return {
    url,
    stop: async () => {
      child.removeAllListeners('exit');
      const exited = new Promise((ok) => child.once('exit', ok));
      child.kill();
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Starts one server for the calling test file; returns its getter. */
export function useServer(hooks: { before: (f: () => Promise<void>) => void; after: (f: () => Promise<void>) => void }): () => Server {
  let server: Server | undefined;
  hooks.before(async () => {
    server = await startServer();
  });
  hooks.after(async () => {
    await server?.stop();
    cleanupDirs();
    releaseEventLoop();
  });
  return () => server ?? assertNever('the server starts in before()');
}

function assertNever(why: string): never {
  throw new Error(why);
}

let dirs: string[] = [];

/** A fresh database file path. */
export function dbPath(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-rn-'));
  dirs.push(dir);
  return join(dir, `${name}.db`);
}

export function cleanupDirs(): void {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs = [];
}

export type Device = {
  db: Db;
  client: InstanceType<typeof SyncClient>;
};

export function device(
  url: string,
  token = ALICE,
  options: { schema?: object; resolver?: Parameters<typeof makeClient>[2] } = {},
): Device {
  const db = Database.open(dbPath('device'), options.schema ?? SCHEMA);
  return { db, client: makeClient(db, url, options.resolver, token) };
}

export function makeClient(
  db: Db,
  url: string,
  resolver?: ConstructorParameters<typeof SyncClient>[1]['resolver'],
  token = ALICE,
) {
  return new SyncClient(db, {
    url,
    tokenProvider: async () => token,
    // Adaptive pages in every test client: the option crosses the FFI on each.
    config: { pushDebounceMs: 50, pageSizing: { targetMs: 1000 }, pushSizing: { targetMs: 1000 } },
    resolver,
  });
}

let n = 0;
export const uid = (p: string) => `${p}-${process.pid}-${++n}`;
