import { readFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';

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
      if (await bindable(port)) return port;
    }
  }
  return listenOn(0);
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
