/**
 * A user-space delay line for UDP (the kernel here has no sch_netem): datagrams to LISTEN are
 * forwarded to TARGET after DELAY_MS, and the answers come back to their sender after DELAY_MS, so
 * the round trip through it grows by twice the delay. Used to put a WAN-like round trip between a
 * repair server and its retransmit server. Runs until SIGTERM.
 * Usage: delay-line.ts LISTEN_ADDR:PORT TARGET_ADDR:PORT DELAY_MS
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';

const [listenText = '', targetText = '', delayText = '0'] = process.argv.slice(2);
const split = (text: string) => {
  const colon = text.lastIndexOf(':');
  return { address: text.slice(0, colon), port: Number(text.slice(colon + 1)) };
};
const listen = split(listenText);
const target = split(targetText);
const delayMs = Number(delayText);

const front = createSocket('udp4');
/** One upstream socket per client, so that answers find their way back. */
const upstreams = new Map<string, Socket>();

function upstreamFor(client: RemoteInfo): Socket {
  const key = `${client.address}:${client.port}`;
  let socket = upstreams.get(key);
  if (socket === undefined) {
    socket = createSocket('udp4');
    socket.on('message', (answer) => {
      setTimeout(() => front.send(answer, client.port, client.address), delayMs);
    });
    socket.bind(0);
    upstreams.set(key, socket);
  }
  return socket;
}

front.on('message', (datagram, client) => {
  const upstream = upstreamFor(client);
  setTimeout(() => upstream.send(datagram, target.port, target.address), delayMs);
});
front.bind(listen.port, listen.address, () =>
  console.error(`delay line ${listenText} -> ${targetText}, ${delayMs} ms each way`),
);
process.on('SIGTERM', () => {
  front.close();
  for (const socket of upstreams.values()) {
    socket.close();
  }
});
