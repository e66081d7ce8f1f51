import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { SiteMux, isMuxRequest, parseEnvelope, plainChannel, type SiteChannel } from './site-channel.js';

/** Real WebSockets over loopback: the accepting side routes each site's frames to its own channel. */
describe('site channels over one WebSocket', () => {
  let wss: WebSocketServer | null = null;
  afterEach(async () => {
    await new Promise<void>((r) => (wss ? wss.close(() => r()) : r()));
    wss = null;
  });

  async function serve(onSocket: (ws: WebSocket, url: string) => void): Promise<string> {
    wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    wss.on('connection', (ws, req) => onSocket(ws, req.url ?? ''));
    await new Promise<void>((r) => wss!.once('listening', () => r()));
    return `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/v1/stream`;
  }

  const next = (ch: SiteChannel, event: string) => new Promise<unknown[]>((r) => ch.once(event, (...a: unknown[]) => r(a)));

  it('routes each site to its channel, closes one site alone, and all with the socket', async () => {
    const accepted = new Map<string, SiteChannel>();
    const got: string[] = [];
    const url = await serve((ws, reqUrl) => {
      expect(isMuxRequest(reqUrl)).toBe(true);
      new SiteMux(ws, (ch) => {
        if (ch.site === 'nope') return 'this primary does not serve site "nope"';
        accepted.set(ch.site, ch);
        ch.on('message', (d: Buffer) => {
          got.push(`${ch.site}:${d.toString()}`);
          ch.send(`echo ${d.toString()}`);
        });
        return null;
      });
    });
    const ws = new WebSocket(`${url}?mux=1`);
    const mux = new SiteMux(ws);
    const a = mux.channel('a');
    const b = mux.channel('b');
    await next(a, 'open');
    const aReply = next(a, 'message');
    const bReply = next(b, 'message');
    a.send('hello from a');
    b.send('hello from b');
    expect(String((await aReply)[0])).toBe('echo hello from a');
    expect(String((await bReply)[0])).toBe('echo hello from b');
    expect(got.sort()).toEqual(['a:hello from a', 'b:hello from b']);

    // A site the peer refuses: that channel closes with the reason, the others stay.
    const n = mux.channel('nope');
    await next(n, 'open');
    const refused = next(n, 'close');
    n.send('hi');
    const [code, reason] = await refused;
    expect(code).toBe(1008);
    expect(String(reason)).toMatch(/does not serve site "nope"/);

    // The server closes site a alone.
    const aClosed = next(a, 'close');
    accepted.get('a')!.close(4003, 'fenced');
    expect((await aClosed)[0]).toBe(4003);
    expect(b.readyState).toBe(WebSocket.OPEN);
    const bAgain = next(b, 'message');
    b.send('still here');
    expect(String((await bAgain)[0])).toBe('echo still here');

    // A channel opened on a socket that is open already says 'open' too.
    const late = mux.channel('late');
    await next(late, 'open');
    expect(late.readyState).toBe(WebSocket.OPEN);

    // The socket goes: every channel closes.
    const bClosed = next(b, 'close');
    const serverB = next(accepted.get('b')!, 'close');
    ws.close(1001, 'bye');
    expect((await bClosed)[0]).toBe(1001);
    expect((await serverB)[0]).toBe(1001);
  });

  it('a plain connection is the channel of the site its first frame names', async () => {
    const seen: string[] = [];
    const url = await serve((ws) => {
      plainChannel(ws, (t) => (JSON.parse(t) as { site?: string }).site ?? null, (ch, text) => {
        if (ch === null) return ws.close(1008, 'no site');
        seen.push(`attach ${ch.site} before ${text}`);
        ch.on('message', (d: Buffer) => seen.push(`msg ${d.toString()}`));
      });
    });
    const ws = new WebSocket(url);
    await new Promise((r) => ws.once('open', r));
    ws.send(JSON.stringify({ type: 'hello', site: 'x' }));
    ws.send(JSON.stringify({ type: 'applied', n: 2 }));
    await new Promise((r) => setTimeout(r, 100));
    expect(seen).toEqual(['attach x before {"type":"hello","site":"x"}', 'msg {"type":"hello","site":"x"}', 'msg {"type":"applied","n":2}']);
    ws.close();
  });

  it('takes only well-formed envelopes', () => {
    expect(parseEnvelope('{"mux":1,"site":"a","data":"x"}')).not.toBeNull();
    expect(parseEnvelope('{"mux":1,"site":"a"}')).toBeNull();
    expect(parseEnvelope('{"mux":1,"site":"a","data":"x","closed":{"code":1,"reason":""}}')).toBeNull();
    expect(parseEnvelope('{"type":"hello","site":"a"}')).toBeNull();
    expect(parseEnvelope('not json')).toBeNull();
  });
});
