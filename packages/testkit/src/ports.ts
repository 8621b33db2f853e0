import { mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A TCP port that was free on 127.0.0.1 a moment ago, chosen below the kernel's ephemeral range
 * (`ip_local_port_range`) when there is room: a port from that range can be handed to any
 * outgoing connection (an rsync pull, an HTTP request) before the caller binds it, and an agent
 * then fails to start with its port in use. Another caller of freePort can still take it, so a
 * start-up that uses it may have to retry with a new port when the bind fails.
 */
export async function freePort(): Promise<number> {
  const [low] = ephemeralRange();
  if (low - 1 > BELOW_EPHEMERAL_FROM) {
    for (let attempt = 0; attempt < 50; attempt++) {
      const port = BELOW_EPHEMERAL_FROM + Math.floor(Math.random() * (low - BELOW_EPHEMERAL_FROM));
      if (reserve(port) && (await bindable(port))) return port;
    }
  }
  return listenOn(0);
}

/**
 * Test files run side by side in several processes, each choosing ports at random and binding
 * them only later (an agent picks its ports, then starts): two of them could pick the same one.
 * A port handed out is reserved with a file `<tmpdir>/pfs-test-ports/<port>` created exclusively
 * (holding the pid), so no other process hands it out while this one lives; the files go when it
 * exits. A reservation whose process is gone, or older than RESERVATION_MAX_AGE_MS, is taken over.
 */
function reserve(port: number): boolean {
  const dir = reservationsDir();
  const file = join(dir, String(port));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      mkdirSync(dir, { recursive: true });
      writeFileSync(file, `${process.pid}\n`, { flag: 'wx' });
      if (reservations.size === 0) process.once('exit', releaseReservations);
      reservations.add(file);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') return true; // no reservations here: bind decides
      if (!stale(file)) return false;
      try {
        unlinkSync(file);
      } catch {}
    }
  }
  return false;
}

/** `PFS_TEST_PORTS_DIR` (read at each call) or `<tmpdir>/pfs-test-ports`. */
function reservationsDir(): string {
  return process.env.PFS_TEST_PORTS_DIR ?? join(tmpdir(), 'pfs-test-ports');
}
const RESERVATION_MAX_AGE_MS = 30 * 60_000;
const reservations = new Set<string>();

function stale(file: string): boolean {
  try {
    const pid = Number(readFileSync(file, 'utf8'));
    if (Date.now() - statSync(file).mtimeMs > RESERVATION_MAX_AGE_MS) return true;
    if (pid === process.pid) return false;
    process.kill(pid, 0);
    return false;
  } catch (error) {
    // Its process is gone (ESRCH), or the file is (ENOENT): free to take.
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'ESRCH' || code === 'ENOENT';
  }
}

function releaseReservations(): void {
  for (const file of reservations) {
    try {
      unlinkSync(file);
    } catch {}
  }
  reservations.clear();
}

/** Where freePort's own range starts (above the well-known and most registered ports). */
const BELOW_EPHEMERAL_FROM = 20_000;

/** The kernel's ephemeral port range; Linux's default where it cannot be read. */
function ephemeralRange(): [number, number] {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    if (Number.isInteger(low) && Number.isInteger(high)) return [low!, high!];
  } catch {}
  return [32768, 60999];
}

async function bindable(port: number): Promise<boolean> {
  return listenOn(port).then(
    () => true,
    () => false,
  );
}

/** Listens on 127.0.0.1:port (0: any), closes, and resolves with the port it had. */
function listenOn(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error(`unexpected server address ${String(address)}`));
        return;
      }
      server.close((error) => (error ? reject(error) : resolve(address.port)));
    });
  });
}

/**
 * A base port N with N + each offset free and reserved as by freePort, all below the ephemeral
 * range when there is room: for a fixed layout of ports (the demo's N..N+2 and N+10000..).
 */
export async function freePortBase(offsets: readonly number[]): Promise<number> {
  const span = Math.max(0, ...offsets);
  const [low] = ephemeralRange();
  const [from, to] =
    low - span > BELOW_EPHEMERAL_FROM ? [BELOW_EPHEMERAL_FROM, low - span] : [1024, 65536 - span];
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = from + Math.floor(Math.random() * (to - from));
    const taken: string[] = [];
    let free = true;
    for (const offset of offsets) {
      if (!reserve(base + offset)) {
        free = false;
        break;
      }
      taken.push(join(reservationsDir(), String(base + offset)));
      if (!(await bindable(base + offset))) {
        free = false;
        break;
      }
    }
    if (free) return base;
    for (const file of taken) {
      try {
        unlinkSync(file);
      } catch {}
      reservations.delete(file);
    }
  }
  throw new Error(`no free base port for offsets ${offsets.join(', ')} after 200 tries`);
}

/** Distinct free ports: asking twice in a row may hand out the same port once the first is closed. */
export async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/** Whether 127.0.0.1:port accepts a TCP connection within timeoutMs. */
export async function canConnect(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
