import { createServer } from 'node:net';

/**
 * A TCP port on 127.0.0.1 that nothing listens on (bound, then released), for a daemon or a cluster
 * the test starts next.
 *
 * Not a port the kernel picks (listen on 0): those come from the ephemeral range (32768-60999 here),
 * which is also where every outgoing connection's local port comes from, so between the release and
 * the daemon's own listen a client socket of any test (a pg connection, a fetch) could take it and
 * the daemon would find its port in use. These come from 10000-24999, below the ephemeral range and
 * away from the machine's own services, in a block of 3000 per test worker (VITEST_POOL_ID), handed
 * out in turn from a random start, so two workers never race for one port and one worker does not
 * hand the same port out twice in a row.
 */
const PORT_BLOCK = 3000;
const PORT_BASE = 10_000;
let portCursor = -1;
export async function closedPort(): Promise<number> {
  const pool = Math.max(0, (Number(process.env.VITEST_POOL_ID) || 1) - 1) % 5;
  const first = PORT_BASE + pool * PORT_BLOCK;
  if (portCursor < 0) portCursor = Math.floor(Math.random() * PORT_BLOCK);
  for (let tries = 0; tries < PORT_BLOCK; tries++) {
    const port = first + (portCursor++ % PORT_BLOCK);
    if (await canListen(port)) return port;
  }
  throw new Error(`closedPort: no free port in ${first}-${first + PORT_BLOCK - 1}`);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once('error', () => res(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => res(true)));
  });
}
