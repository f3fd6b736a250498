import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HostInfo, Instance, type EnsureInstance } from '#core/agent-api.ts';
import { createGateway, type Gateway, type GatewayTarget } from '../agent/gateway.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';
import { agentCaller, appInstanceSpec, appQuery, eventually } from './helpers/agent.ts';

/** A server that answers every chunk with `<name>:<chunk>`, so a test sees which target it reached. */
async function namedEcho(name: string, port = 0): Promise<Server & { target: GatewayTarget }> {
  const server = createServer((socket) => socket.on('data', (chunk) => socket.write(`${name}:${chunk}`)).on('error', () => undefined));
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return Object.assign(server, { target: { host: '127.0.0.1', port: (server.address() as AddressInfo).port } });
}

/** Stops listening; the connections still open end with their clients (the gateway ends both sides together). */
const stop = (server: Server) => new Promise<void>((resolve) => server.close(() => resolve()));

async function freePort(): Promise<number> {
  const probe = await namedEcho('probe');
  await stop(probe);
  return probe.target.port;
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => resolve(socket)).once('error', reject);
  });
}

/** Sends `text` and resolves with the first reply, or undefined when the connection closes without one. */
function ask(socket: Socket, text: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    socket.once('data', (chunk) => resolve(String(chunk)));
    socket.once('close', () => resolve(undefined));
    socket.write(text);
  });
}

const closed = (socket: Socket) => new Promise<void>((resolve) => (socket.closed ? resolve() : socket.once('close', () => resolve())));

function portAcceptsConnections(port: number): Promise<boolean> {
  return open(port).then((socket) => { socket.destroy(); return true; }, () => false);
}

describe('gateway (TCP proxy)', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    await Promise.all(cleanup.splice(0).map((fn) => fn()));
  });

  async function gatewayTo(target: () => GatewayTarget | undefined, waitMs?: number): Promise<Gateway> {
    const gateway = await createGateway({ port: await freePort(), target, waitMs });
    cleanup.push(() => gateway.close());
    return gateway;
  }

  async function echo(name: string, port?: number) {
    const server = await namedEcho(name, port);
    cleanup.push(() => stop(server));
    return server;
  }

  it('pipes a connection to the target, and sends new connections where the target points now', async () => {
    const [a, b] = [await echo('a'), await echo('b')];
    let target = a.target;
    const gateway = await gatewayTo(() => target);
    const first = await open(gateway.port);

    const before = await ask(first, 'hello');
    target = b.target;
    const second = await open(gateway.port);

    expect(before).toBe('a:hello');
    expect(await ask(second, 'again')).toBe('b:again');
    expect(await ask(first, 'still')).toBe('a:still');
    first.destroy();
    second.destroy();
  });

  it('holds a connection while there is no target, and sends it on once there is one', async () => {
    const a = await echo('a');
    let asked = 0;
    const gateway = await gatewayTo(() => (++asked >= 3 ? a.target : undefined));
    const client = await open(gateway.port);

    const reply = await ask(client, 'waited');

    expect(reply).toBe('a:waited');
    // Twice while there was none, then once to connect and once to check it is still the target.
    expect(asked).toBe(4);
    client.destroy();
  });

  it('sends a connection on only if the target it reached is still the target: one held while it connected waits', async () => {
    const [a, b] = [await echo('a'), await echo('b')];
    let target: GatewayTarget | undefined = a.target;
    let asked = 0;
    // The first answer is `a`; a hold starts at once (as a stop would), then the target becomes `b`.
    const gateway = await gatewayTo(() => (++asked === 1 ? a.target : target));
    target = undefined;
    const client = await open(gateway.port);
    setTimeout(() => { target = b.target; }, 100);

    expect(await ask(client, 'moved')).toBe('b:moved');
    client.destroy();
  });

  it('tells when every connection it sent on has been answered by its server', async () => {
    const a = await echo('a');
    const gateway = await gatewayTo(() => a.target);
    const client = await open(gateway.port);
    await eventually(async () => {
      // Connected upstream, not yet answered: the echo answers only once the client speaks.
      const settled = await Promise.race([gateway.settled(5_000).then(() => true), new Promise((r) => setTimeout(() => r(false), 100))]);
      return settled ? undefined : true;
    }, 5_000);

    const settled = gateway.settled(5_000);
    expect(await ask(client, 'hi')).toBe('a:hi');
    await settled;
    client.destroy();
  });

  it('retries a target that refuses until it listens', async () => {
    const port = await freePort();
    let asked = 0;
    let listening: Promise<unknown> | undefined;
    const gateway = await gatewayTo(() => {
      if (++asked === 3) listening = echo('late', port);
      return { host: '127.0.0.1', port };
    });
    const client = await open(gateway.port);

    const reply = await ask(client, 'knock');

    expect(reply).toBe('late:knock');
    // The first two attempts found nothing listening on the port.
    expect(listening).toBeDefined();
    expect(asked).toBeGreaterThanOrEqual(3);
    client.destroy();
  });

  it('closes a connection that found no target within its wait', async () => {
    const gateway = await gatewayTo(() => undefined, 300);
    const started = Date.now();
    const client = await open(gateway.port);

    const reply = await ask(client, 'anyone?');

    expect(reply).toBeUndefined();
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it('closes the client when the target closes its side', async () => {
    const server = createServer((socket) => socket.once('data', () => socket.destroy()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanup.push(() => stop(server));
    const gateway = await gatewayTo(() => ({ host: '127.0.0.1', port: (server.address() as AddressInfo).port }));
    const client = await open(gateway.port);

    client.write('bye');

    await closed(client);
  });

  it('on close, stops listening and ends live connections', async () => {
    const a = await echo('a');
    const gateway = await createGateway({ port: await freePort(), target: () => a.target });
    const client = await open(gateway.port);
    expect(await ask(client, 'x')).toBe('a:x');

    await gateway.close();

    await closed(client);
    expect(await portAcceptsConnections(gateway.port)).toBe(false);
  });
});

describe("an instance's gateway (real PostgreSQL through the agent)", () => {
  const secret = 'test-secret';
  const password = 'gateway password';
  let dataDir: string;
  let agent: AgentProcess;
  let spec: EnsureInstance;
  let gatewayPort: number;
  const call = agentCaller(() => agent, secret);

  const instanceWithStatus = (id: string, status: Instance['status']) => eventually(async () => {
    const instance = Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
    return instance.status === status ? instance : undefined;
  });

  const query = <T extends pg.QueryResultRow>(port: number, sql: string) => appQuery<T>(port, password, sql);

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'dbplane-gateway-'));
    agent = await spawnAgent({ dataDir, secret });
    const host = HostInfo.parse((await call('GET', '/v1/host')).body);
    spec = appInstanceSpec(host, password);
  });

  afterAll(async () => {
    await agent?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('proxies a PostgreSQL connection end to end on its own stable port', async () => {
    const created = Instance.parse((await call('PUT', '/v1/instances/app-db', spec)).body);
    gatewayPort = created.gatewayPort;

    const running = await instanceWithStatus('app-db', 'running');
    await query(gatewayPort, 'CREATE TABLE notes (id int PRIMARY KEY, body text)');
    await query(gatewayPort, "INSERT INTO notes VALUES (1, 'through the gateway')");

    expect(gatewayPort).not.toBe(running.port);
    expect(running.gatewayPort).toBe(gatewayPort);
    expect(await query(running.port, 'SELECT body FROM notes')).toEqual([{ body: 'through the gateway' }]);
    const [{ port }] = await query<{ port: string }>(gatewayPort, "SELECT current_setting('port') AS port");
    expect(Number(port)).toBe(running.port);
  });

  it('rides through a restart on new settings: a connection made meanwhile reaches the restarted server', async () => {
    spec = { ...spec, settings: { ...spec.settings, shared_buffers: '48MB' } };

    const { body } = await call('PUT', '/v1/instances/app-db', spec);
    const rows = await query(gatewayPort, 'SHOW shared_buffers');

    expect(body).toMatchObject({ status: 'starting', gatewayPort });
    expect(rows).toEqual([{ shared_buffers: '48MB' }]);
  });

  it('keeps its gateway port across an agent restart, and gives one to an instance saved without it', async () => {
    await agent.stop();
    const stateFile = join(dataDir, 'instances', 'app-db', 'state.json');
    const { gatewayPort: _old, ...older } = JSON.parse(await readFile(stateFile, 'utf8'));
    await writeFile(stateFile, JSON.stringify(older));

    agent = await spawnAgent({ dataDir, secret });
    const rows = await query(Instance.parse((await call('GET', '/v1/instances/app-db')).body).gatewayPort, 'SELECT body FROM notes');
    const given = JSON.parse(await readFile(stateFile, 'utf8')).gatewayPort;
    await agent.stop();
    agent = await spawnAgent({ dataDir, secret });

    expect(rows).toEqual([{ body: 'through the gateway' }]);
    expect(given).toEqual(expect.any(Number));
    expect(Instance.parse((await call('GET', '/v1/instances/app-db')).body).gatewayPort).toBe(given);
    expect(await query(given, 'SELECT body FROM notes')).toEqual([{ body: 'through the gateway' }]);
    gatewayPort = given;
  });

  it('closes the gateway when the instance is deleted', async () => {
    const deleted = await call('DELETE', '/v1/instances/app-db');

    expect(deleted.status).toBe(204);
    expect(await portAcceptsConnections(gatewayPort)).toBe(false);
  });
});
