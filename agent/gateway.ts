import { connect, createServer, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** Where the gateway sends new connections: the database's primary server. */
export interface GatewayTarget {
  host: string;
  port: number;
}

export interface GatewayOptions {
  /** The stable port clients connect to. */
  port: number;
  /** The primary now, or undefined while there is none (stopped, restarting, being swapped); read for every new connection. */
  target: () => GatewayTarget | undefined;
  /**
   * How long a new connection waits for a target that is missing or refuses, before it is closed. Default: 15 s,
   * longer than a planned restart or switchover takes even on a loaded host, and within common client connect timeouts.
   */
  waitMs?: number;
}

export interface Gateway {
  readonly port: number;
  /**
   * Resolves once every connection already sent to a server has had its first answer from it (or closed),
   * at most after `timeoutMs`. PostgreSQL decides at accept whether it takes a connection; one still in its
   * listen backlog when a shutdown starts is refused ("the database system is shutting down"). So a
   * planned stop first holds new connections, then waits for this.
   */
  settled(timeoutMs?: number): Promise<void>;
  /** Stops listening and destroys every live connection (and those still waiting). */
  close(): Promise<void>;
}

const host = '127.0.0.1';
const retryEveryMs = 20;

/**
 * A database's stable endpoint: a TCP proxy that pipes each client connection to the current target,
 * byte for byte (whatever the protocol, TLS included). A connection that finds no target, or one that
 * refuses, waits briefly for it (a restart on new settings, a restore swap), then is closed.
 */
export async function createGateway({ port, target, waitMs = 15_000 }: GatewayOptions): Promise<Gateway> {
  const live = new Set<Socket>();
  /** Upstreams whose server has not answered yet: their connection may still wait in its listen backlog. */
  const unanswered = new Set<Socket>();
  let closed = false;

  const track = (socket: Socket) => {
    live.add(socket);
    socket.once('close', () => live.delete(socket));
  };

  async function relay(client: Socket): Promise<void> {
    track(client);
    // A client that leaves or fails takes its upstream with it (see below); errors are only that.
    client.on('error', () => client.destroy());
    // Unread, the client's first bytes (a startup or SSL request) wait in the socket until the upstream is there.
    const upstream = await reachTarget(client);
    if (!upstream) {
      client.destroy();
      return;
    }
    track(upstream);
    upstream.on('error', () => upstream.destroy());
    // Either side gone for good ends the pair; a half-close (FIN) passes through the pipes.
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
    if (client.destroyed) upstream.destroy();
    client.pipe(upstream);
    upstream.pipe(client);
  }

  async function reachTarget(client: Socket): Promise<Socket | undefined> {
    const deadline = Date.now() + waitMs;
    while (!closed && !client.destroyed) {
      const current = target();
      const upstream = current && await attempt(current, deadline - Date.now());
      // The target may have changed while this connected (held for a stop, switched over): try again.
      if (upstream && !sameTarget(target(), current)) {
        upstream.destroy();
        continue;
      }
      if (upstream) {
        if (closed || client.destroyed) {
          upstream.destroy();
          return undefined;
        }
        unanswered.add(upstream);
        const answered = () => unanswered.delete(upstream);
        upstream.once('data', answered).once('close', answered);
        return upstream;
      }
      // The whole wait is used: a target back just before the deadline still gets this connection.
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await sleep(Math.min(retryEveryMs, left));
    }
    return undefined;
  }

  const server = createServer({ allowHalfOpen: true }, (client) => void relay(client));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });

  return {
    port,
    async settled(timeoutMs = 1_000) {
      for (const deadline = Date.now() + timeoutMs; unanswered.size > 0 && Date.now() < deadline;) await sleep(5);
    },
    async close() {
      closed = true;
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of live) socket.destroy();
      await stopped;
    },
  };
}

function sameTarget(a: GatewayTarget | undefined, b: GatewayTarget): boolean {
  return a?.host === b.host && a.port === b.port;
}

/** One connection attempt; undefined when refused or not connected within `timeoutMs`. */
function attempt({ host, port }: GatewayTarget, timeoutMs: number): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ host, port, allowHalfOpen: true });
    const fail = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(undefined);
    };
    const timer = setTimeout(fail, Math.max(timeoutMs, 1));
    socket.once('error', fail);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', fail);
      resolve(socket);
    });
  });
}
