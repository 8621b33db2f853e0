import { connect } from 'node:net';

/**
 * Whether `host:port` actively refuses a TCP connection (ECONNREFUSED): the host is up and
 * answers, but nothing listens there any more, which for a node's HTTP port means its agent
 * process is gone. A timeout or an unreachable host says nothing (a partition looks like that
 * too) and answers false, as does a connection that opens.
 */
export function refusesConnections(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (refused: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(refused);
    };
    const timer = setTimeout(() => done(false), timeoutMs).unref();
    socket.once('connect', () => done(false));
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code === 'ECONNREFUSED'));
  });
}
