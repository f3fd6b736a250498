import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  classifyAddress, outboundPolicy, postToTarget, resolveOutboundUrl, UrlNotAllowed,
} from '../functions/core/outbound-url.ts';

/** The outbound URL guard: which addresses are refused, in every spelling, before and after DNS. */

const strict = outboundPolicy('');
const resolvesTo = (...addresses: string[]) => async () => addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));

describe('address classification', () => {
  it.each([
    ['10.1.2.3', 'private'], ['172.16.0.1', 'private'], ['172.31.255.255', 'private'], ['192.168.1.1', 'private'],
    ['127.0.0.1', 'loopback'], ['127.255.255.254', 'loopback'],
    ['169.254.169.254', 'metadata'], ['169.254.10.1', 'link-local'],
    ['0.0.0.0', 'unspecified'], ['100.64.0.1', 'cgnat'], ['100.127.255.255', 'cgnat'],
    ['224.0.0.1', 'multicast'], ['239.255.255.250', 'multicast'], ['255.255.255.255', 'reserved'], ['192.0.2.7', 'reserved'],
    ['::', 'unspecified'], ['::1', 'loopback'], ['fc00::1', 'private'], ['fd12:3456::1', 'private'],
    ['fe80::1', 'link-local'], ['febf:ffff::1', 'link-local'], ['ff02::1', 'multicast'], ['2001:db8::1', 'reserved'],
  ])('refuses %s as %s', (address, expected) => {
    expect(classifyAddress(address)).toBe(expected);
  });

  it.each([
    ['::ffff:127.0.0.1', 'loopback'], ['::ffff:7f00:1', 'loopback'], ['::ffff:a9fe:a9fe', 'metadata'], ['::ffff:10.0.0.1', 'private'],
    ['::127.0.0.1', 'loopback'], ['64:ff9b::a00:1', 'private'], ['2002:7f00:1::', 'loopback'], ['2002:a9fe:a9fe::1', 'metadata'],
  ])('judges the IPv4 address inside %s (%s)', (address, expected) => {
    expect(classifyAddress(address)).toBe(expected);
  });

  it.each(['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '169.255.0.1', '2606:4700:4700::1111', '::ffff:8.8.8.8', '2002:808:808::1'])(
    'lets the public address %s through', (address) => {
      expect(classifyAddress(address)).toBeUndefined();
    },
  );
});

describe('URLs', () => {
  it.each([
    ['https://2130706433/', 'loopback'],
    ['https://0x7f.1/', 'loopback'],
    ['https://0x7f000001/', 'loopback'],
    ['https://017700000001/', 'loopback'],
    ['https://0177.0.0.1/', 'loopback'],
    ['https://127.1/', 'loopback'],
    ['https://[::ffff:127.0.0.1]/', 'loopback'],
    ['https://[::1]:8443/', 'loopback'],
    ['https://169.254.169.254/latest/meta-data/', 'metadata'],
    ['https://0xa9.0xfe.0xa9.0xfe/', 'metadata'],
    ['https://2852039166/', 'metadata'],
    ['https://[fd00::1]/', 'private'],
  ])('refuses %s (%s) without asking DNS', async (url, expected) => {
    const refusal = resolveOutboundUrl(url, strict, () => Promise.reject(new Error('no DNS for literals')));
    await expect(refusal).rejects.toThrow(UrlNotAllowed);
    await expect(refusal).rejects.toThrow(expected);
  });

  it('refuses a name that resolves to a private address', async () => {
    await expect(resolveOutboundUrl('https://hooks.example.com/x', strict, resolvesTo('10.0.0.5'))).rejects.toThrow('private address (10.0.0.5)');
  });

  it('refuses a name whose answer mixes a public and an internal address', async () => {
    await expect(resolveOutboundUrl('https://hooks.example.com/x', strict, resolvesTo('93.184.216.34', '::1'))).rejects.toThrow('loopback');
  });

  it('keeps the checked address of a public name for the connection', async () => {
    const target = await resolveOutboundUrl('https://hooks.example.com/x', strict, resolvesTo('93.184.216.34'));
    expect(target).toMatchObject({ address: '93.184.216.34', family: 4 });
    expect(target.url.hostname).toBe('hooks.example.com');
  });

  it('refuses a name that does not resolve', async () => {
    await expect(resolveOutboundUrl('https://nowhere.invalid/', strict, () => Promise.reject(new Error('ENOTFOUND')))).rejects.toThrow('does not resolve');
  });

  it('refuses http, other schemes and credentials unless allowed', async () => {
    await expect(resolveOutboundUrl('http://hooks.example.com/', strict, resolvesTo('93.184.216.34'))).rejects.toThrow('must be an https URL');
    await expect(resolveOutboundUrl('ftp://hooks.example.com/', strict, resolvesTo('93.184.216.34'))).rejects.toThrow(UrlNotAllowed);
    await expect(resolveOutboundUrl('https://user:pw@hooks.example.com/', strict, resolvesTo('93.184.216.34'))).rejects.toThrow('credentials');
    await expect(resolveOutboundUrl('not a url', strict)).rejects.toThrow('not a valid URL');
  });
});

describe('operator policy', () => {
  it('allows exactly the ranges and schemes the operator lists', async () => {
    const policy = outboundPolicy('127.0.0.1/32, http');
    await expect(resolveOutboundUrl('http://127.0.0.1:9/', policy)).resolves.toMatchObject({ address: '127.0.0.1' });
    await expect(resolveOutboundUrl('http://127.0.0.2:9/', policy)).rejects.toThrow('loopback');
    await expect(resolveOutboundUrl('http://[::1]:9/', policy)).rejects.toThrow('loopback');
    await expect(resolveOutboundUrl('http://[::1]:9/', outboundPolicy('::1,http'))).resolves.toMatchObject({ address: '::1', family: 6 });
  });

  it('rejects a malformed setting instead of ignoring it', () => {
    expect(() => outboundPolicy('127.0.0.1/33')).toThrow('DBPLANE_OUTBOUND_ALLOW');
    expect(() => outboundPolicy('allow-everything')).toThrow('neither a CIDR');
  });
});

describe('the request', () => {
  let server: Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    server?.close();
    server = undefined;
  });

  async function listen(handler: (request: IncomingMessage, respond: (status: number, headers?: Record<string, string>) => void) => void) {
    server = createServer((request, response) => handler(request, (status, headers) => response.writeHead(status, headers).end()));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return (server.address() as AddressInfo).port;
  }

  it('goes to the checked address, not to a second resolution of the name', async () => {
    const seen: { host?: string; body: string }[] = [];
    const port = await listen((request, respond) => {
      let body = '';
      request.on('data', (chunk) => (body += chunk)).on('end', () => {
        seen.push({ host: request.headers.host, body });
        respond(204);
      });
    });
    // `.invalid` never resolves: the only way to reach the receiver is the pinned address.
    const target = { url: new URL(`http://receiver.invalid:${port}/hook`), address: '127.0.0.1', family: 4 as const };
    await expect(postToTarget(target, '{"a":1}', {}, 2_000)).resolves.toEqual({ statusCode: 204 });
    expect(seen).toEqual([{ host: `receiver.invalid:${port}`, body: '{"a":1}' }]);
  });

  it('does not follow a redirect', async () => {
    let requests = 0;
    const port = await listen((_request, respond) => {
      requests++;
      respond(302, { location: 'http://169.254.169.254/' });
    });
    await expect(postToTarget({ url: new URL(`http://127.0.0.1:${port}/`), address: '127.0.0.1', family: 4 }, '{}', {}, 2_000)).resolves.toEqual({ statusCode: 302 });
    expect(requests).toBe(1);
  });

  it('gives up after the timeout', async () => {
    const port = await listen(() => undefined);
    const started = Date.now();
    await expect(postToTarget({ url: new URL(`http://127.0.0.1:${port}/`), address: '127.0.0.1', family: 4 }, '{}', {}, 300)).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});
