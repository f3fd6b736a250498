import { lookup as dnsLookup } from 'node:dns/promises';
import * as http from 'node:http';
import * as https from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import { envNames } from './config.ts';

/**
 * Calls to URLs that customers give us (webhooks; log drains next) without letting them reach inside:
 * the host is resolved, every address it resolves to must be public, and the request goes to the
 * address that was checked, so a DNS answer that changes in between (rebinding) cannot redirect it.
 * The operator may open exceptions (`DBPLANE_OUTBOUND_ALLOW`, see `outboundPolicy`).
 */

/** Why an address is refused; undefined for a public one. */
export type AddressClass =
  | 'unspecified' | 'loopback' | 'private' | 'link-local' | 'metadata' | 'cgnat' | 'multicast' | 'reserved';

interface Range { family: 4 | 6; network: bigint; prefix: number; class: AddressClass }

function range(cidr: string, addressClass: AddressClass): Range {
  const parsed = parseCidr(cidr);
  if (!parsed) throw new Error(`invalid range ${cidr}`);
  return { ...parsed, class: addressClass };
}

/** Most specific first: the metadata address is link-local too, but says more. */
const blockedRanges: readonly Range[] = [
  range('169.254.169.254/32', 'metadata'),
  range('0.0.0.0/8', 'unspecified'),
  range('10.0.0.0/8', 'private'),
  range('100.64.0.0/10', 'cgnat'),
  range('127.0.0.0/8', 'loopback'),
  range('169.254.0.0/16', 'link-local'),
  range('172.16.0.0/12', 'private'),
  range('192.0.0.0/24', 'reserved'),
  range('192.0.2.0/24', 'reserved'),
  range('192.168.0.0/16', 'private'),
  range('198.18.0.0/15', 'reserved'),
  range('198.51.100.0/24', 'reserved'),
  range('203.0.113.0/24', 'reserved'),
  range('224.0.0.0/4', 'multicast'),
  range('240.0.0.0/4', 'reserved'),
  range('::/128', 'unspecified'),
  range('::1/128', 'loopback'),
  range('64:ff9b:1::/48', 'private'),
  range('100::/64', 'reserved'),
  range('2001::/32', 'reserved'),
  range('2001:db8::/32', 'reserved'),
  range('fc00::/7', 'private'),
  range('fe80::/10', 'link-local'),
  range('fec0::/10', 'private'),
  range('ff00::/8', 'multicast'),
];

/** IPv6 prefixes that carry an IPv4 address in their low 32 bits (or, for 6to4, bits 16-47): judged by that address. */
const embeddingRanges: readonly { range: Omit<Range, 'class'>; shift: bigint }[] = [
  { range: parseCidr('::ffff:0:0/96')!, shift: 0n }, // IPv4-mapped
  { range: parseCidr('::/96')!, shift: 0n }, // IPv4-compatible (deprecated)
  { range: parseCidr('64:ff9b::/96')!, shift: 0n }, // NAT64
  { range: parseCidr('2002::/16')!, shift: 80n }, // 6to4
];

function parseIPv4(text: string): bigint | undefined {
  if (isIP(text) !== 4) return undefined;
  return text.split('.').reduce((value, part) => (value << 8n) | BigInt(Number(part)), 0n);
}

function parseIPv6(text: string): bigint | undefined {
  if (isIP(text) !== 6) return undefined;
  let groups = text.toLowerCase();
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(groups)?.[1];
  if (dotted) {
    const v4 = parseIPv4(dotted)!;
    groups = `${groups.slice(0, -dotted.length)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head, tail] = groups.split('::') as [string, string | undefined];
  const headParts = head ? head.split(':') : [];
  const tailParts = tail ? tail.split(':') : [];
  const parts = tail === undefined ? headParts : [...headParts, ...Array(8 - headParts.length - tailParts.length).fill('0'), ...tailParts];
  return parts.reduce((value, part) => (value << 16n) | BigInt(parseInt(part, 16)), 0n);
}

function parseAddress(address: string): { family: 4 | 6; value: bigint } | undefined {
  const v4 = parseIPv4(address);
  if (v4 !== undefined) return { family: 4, value: v4 };
  const v6 = parseIPv6(address);
  return v6 === undefined ? undefined : { family: 6, value: v6 };
}

function parseCidr(cidr: string): Omit<Range, 'class'> | undefined {
  const [address, bits, extra] = cidr.split('/');
  const parsed = parseAddress(address);
  if (!parsed || extra !== undefined) return undefined;
  const width = parsed.family === 4 ? 32 : 128;
  const prefix = bits === undefined ? width : Number(bits);
  if (!/^\d+$/.test(bits ?? String(width)) || prefix > width) return undefined;
  return { family: parsed.family, network: parsed.value, prefix };
}

function inRange(address: { family: 4 | 6; value: bigint }, r: Omit<Range, 'class'>): boolean {
  if (address.family !== r.family) return false;
  const shift = BigInt((r.family === 4 ? 32 : 128) - r.prefix);
  return address.value >> shift === r.network >> shift;
}

function classify(address: { family: 4 | 6; value: bigint }): AddressClass | undefined {
  if (address.family === 6 && address.value > 1n) {
    const embedding = embeddingRanges.find((e) => inRange(address, e.range));
    if (embedding) return classify({ family: 4, value: (address.value >> embedding.shift) & 0xffffffffn });
  }
  return blockedRanges.find((r) => inRange(address, r))?.class;
}

/** The class of a literal IP address that must not be called (undefined: public). Throws on a non-address. */
export function classifyAddress(address: string): AddressClass | undefined {
  const parsed = parseAddress(address);
  if (!parsed) throw new Error(`not an IP address: ${address}`);
  return classify(parsed);
}

/** What the operator allows beyond public HTTPS addresses. */
export interface OutboundPolicy {
  /** Plain `http:` URLs (for a receiver on the operator's own network or in tests). */
  allowHttp: boolean;
  /** Ranges callable even though they are not public. */
  allowedRanges: readonly Omit<Range, 'class'>[];
}

/**
 * `DBPLANE_OUTBOUND_ALLOW`: a comma-separated list of CIDRs or single addresses that may be called even
 * though they are not public, and the word `http` to allow plain HTTP. Unset: public HTTPS only.
 * A malformed entry is a configuration error, not something to ignore silently.
 */
export function outboundPolicy(value = process.env[envNames.outboundAllow]): OutboundPolicy {
  const entries = (value ?? '').split(',').map((e) => e.trim()).filter(Boolean);
  const allowedRanges = entries.filter((e) => e !== 'http').map((entry) => {
    const parsed = parseCidr(entry);
    if (!parsed) throw new Error(`${envNames.outboundAllow}: "${entry}" is neither a CIDR, an IP address nor "http"`);
    return parsed;
  });
  return { allowHttp: entries.includes('http'), allowedRanges };
}

/** A URL the policy refuses; `reason` is safe to show to the customer who gave it. */
export class UrlNotAllowed extends Error {
  override readonly name = 'UrlNotAllowed';
}

/** Syntax and scheme only (no DNS): what can be said of a URL before resolving it. */
export function checkUrlSyntax(raw: string, policy: OutboundPolicy): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UrlNotAllowed('not a valid URL');
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && policy.allowHttp)) {
    throw new UrlNotAllowed(policy.allowHttp ? 'must be an http or https URL' : 'must be an https URL');
  }
  if (url.username || url.password) throw new UrlNotAllowed('must not contain credentials');
  return url;
}

/** A URL with the one address it was checked at: the request goes there and nowhere else. */
export interface OutboundTarget {
  url: URL;
  address: string;
  family: 4 | 6;
}

type Resolver = (hostname: string) => Promise<{ address: string; family: number }[]>;
const systemResolver: Resolver = (hostname) => dnsLookup(hostname, { all: true, verbatim: true });

/**
 * Resolves the URL's host and checks every address it has (an answer mixing a public and a private
 * address is refused: which one a client picks is not ours to control). Throws UrlNotAllowed.
 */
export async function resolveOutboundUrl(raw: string, policy: OutboundPolicy, resolve: Resolver = systemResolver): Promise<OutboundTarget> {
  const url = checkUrlSyntax(raw, policy);
  // The URL parser has already turned decimal, octal and hex IPv4 spellings into dotted quads.
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  let addresses: { address: string; family: number }[];
  if (isIP(host)) addresses = [{ address: host, family: isIP(host) }];
  else {
    try {
      addresses = await resolve(host);
    } catch {
      throw new UrlNotAllowed(`the host ${host} does not resolve`);
    }
    if (addresses.length === 0) throw new UrlNotAllowed(`the host ${host} does not resolve`);
  }
  for (const { address } of addresses) {
    const parsed = parseAddress(address)!;
    const refused = classify(parsed);
    if (refused && !policy.allowedRanges.some((r) => inRange(parsed, r))) {
      throw new UrlNotAllowed(`the host ${host} resolves to a ${refused} address (${address}), which cannot be called`);
    }
  }
  const [first] = addresses;
  return { url, address: first.address, family: first.family === 6 ? 6 : 4 };
}

/**
 * POSTs `body` to a checked target, connecting to its checked address (TLS still verifies the URL's
 * host name). Redirects are not followed; the response body is read and dropped. Rejects on network
 * errors and after `timeoutMs` in all.
 */
export function postToTarget(target: OutboundTarget, body: string, headers: Record<string, string>, timeoutMs: number): Promise<{ statusCode: number }> {
  const pinned: LookupFunction = (_hostname, options, callback) => {
    if (options.all) callback(null, [{ address: target.address, family: target.family }]);
    else callback(null, target.address, target.family);
  };
  const send = target.url.protocol === 'https:' ? https.request : http.request;
  const signal = AbortSignal.timeout(timeoutMs);
  return new Promise((resolve, reject) => {
    // Aborted by the timeout: say so (a TimeoutError), not just that the request was aborted.
    const fail = (error: Error) => reject(signal.aborted ? signal.reason : error);
    const request = send(target.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers },
      lookup: pinned,
      agent: false,
      signal,
    }, (response) => {
      response.on('error', fail);
      response.on('end', () => resolve({ statusCode: response.statusCode ?? 0 }));
      response.resume();
    });
    request.on('error', fail);
    request.end(body);
  });
}
