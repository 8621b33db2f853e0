import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TestkitError } from './errors.ts';
import { freePorts } from './ports.ts';
import { type ExitInfo, type GroupProcess, spawnGroup } from './process-group.ts';
import { track, untrack } from './registry.ts';
import { makeTempDir, removeTempDir } from './temp.ts';

/** How to start one kind of service on fresh ports in a fresh temp dir. */
export interface ServiceSpec {
  what: string;
  bin: string;
  portCount: number;
  readyTimeoutMs: number;
  signal: AbortSignal | undefined;
  /** Writes config into `dir` and returns the argv. */
  prepare(dir: string, ports: number[]): Promise<string[]>;
  /** Whether the process answers on its ports; only asked while it is alive. */
  probe(pid: number, ports: number[]): Promise<boolean>;
}

export interface Service {
  readonly pid: number;
  readonly dir: string;
  readonly ports: number[];
  stop(): Promise<void>;
  kill(signal: NodeJS.Signals): void;
}

const MAX_ATTEMPTS = 5;
const POLL_MS = 50;
// Both etcd ("bind: address already in use") and rsync ("bind() failed: Address already in use").
const PORT_TAKEN = /address already in use/i;

/**
 * Starts the service, retrying on fresh ports when a port was taken between freePort() and the
 * service's bind (another test, another package running in parallel under turbo).
 */
export async function startService(spec: ServiceSpec): Promise<Service> {
  for (let attempt = 1; ; attempt++) {
    throwIfAborted(spec);
    const dir = await makeTempDir(`pfs-testkit-${spec.what}-`);
    const logFile = join(dir, `${spec.what}.log`);
    let service: Started;
    try {
      const ports = await freePorts(spec.portCount);
      const args = await spec.prepare(dir, ports);
      service = wrap(await spawnGroup(spec.bin, args, { logFile, what: spec.what }), dir, ports);
    } catch (error) {
      await removeTempDir(dir);
      throw error;
    }
    const outcome = await waitReady(spec, service);
    if (outcome === 'ready') return service;
    const logTail = await tail(logFile);
    await service.stop();
    throwIfAborted(spec);
    if (outcome === 'exited' && PORT_TAKEN.test(logTail) && attempt < MAX_ATTEMPTS) continue;
    throw new TestkitError(
      'TESTKIT_START_FAILED',
      outcome === 'exited'
        ? `${spec.what} exited during start-up (attempt ${attempt}): see logTail`
        : `${spec.what} was not ready within ${spec.readyTimeoutMs} ms: see logTail`,
      { logTail },
    );
  }
}

interface Started extends Service {
  readonly exited: Promise<ExitInfo>;
}

function wrap(proc: GroupProcess, dir: string, ports: number[]): Started {
  let stopping: Promise<void> | undefined;
  const service: Started = {
    pid: proc.pid,
    exited: proc.exited,
    dir,
    ports,
    kill: (signal) => proc.signal(signal),
    stop() {
      // Idempotent: every caller (test, stopAll, a second stop) awaits the same shutdown.
      stopping ??= (async () => {
        try {
          await proc.stop();
        } finally {
          untrack(service);
          await removeTempDir(dir);
        }
      })();
      return stopping;
    },
  };
  // Tracked before it is ready, so a start-up that hangs is still cleaned up by stopAll/exit.
  track(service);
  return service;
}

async function waitReady(spec: ServiceSpec, service: Started): Promise<'ready' | 'exited' | 'timeout'> {
  const deadline = performance.now() + spec.readyTimeoutMs;
  let exited = false;
  void service.exited.then(() => {
    exited = true;
  });
  while (!spec.signal?.aborted) {
    if (exited) return 'exited';
    if (performance.now() >= deadline) return 'timeout';
    if (await spec.probe(service.pid, service.ports).catch(() => false)) {
      // The probe and the exit notification race; a process that died meanwhile is not ready.
      return exited ? 'exited' : 'ready';
    }
    await sleep(POLL_MS);
  }
  return 'timeout';
}

function throwIfAborted(spec: ServiceSpec): void {
  if (spec.signal?.aborted) {
    throw new TestkitError('TESTKIT_ABORTED', `start of ${spec.what} was aborted`, {
      cause: spec.signal.reason,
    });
  }
}

async function tail(file: string, maxChars = 4000): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.slice(-maxChars);
}
