/**
 * A live stream that nobody's protocol wrote, for side-by-side runs: `send` emits stamped
 * 1316-byte datagrams (sequence and send time in the first 12 bytes) at a packet rate for a
 * duration; `receive` counts them and reports residual loss and one-way delay percentiles.
 * Usage: live-peer.ts send ADDR:PORT PACKETS_PER_SECOND SECONDS
 *        live-peer.ts receive ADDR:PORT SECONDS [IFACE_ADDR]   (joins ADDR when it is a group)
 */
import { createSocket } from 'node:dgram';

const [mode, target = '', third = '', fourth = '', fifth] = process.argv.slice(2);
const colon = target.lastIndexOf(':');
const address = target.slice(0, colon);
const port = Number(target.slice(colon + 1));
const nowMs = () => performance.timeOrigin + performance.now();

if (mode === 'send') {
  const rate = Number(third);
  const total = Math.round(rate * Number(fourth));
  const socket = createSocket('udp4');
  const started = performance.now();
  let sent = 0;
  const tick = () => {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate) + 1);
    while (sent < due) {
      const datagram = Buffer.alloc(1316, 0x47);
      datagram.writeUInt32BE(sent, 0);
      datagram.writeDoubleBE(nowMs(), 4);
      socket.send(datagram, port, address);
      sent++;
    }
    if (sent < total) {
      setTimeout(tick, 1);
    } else {
      setTimeout(() => {
        console.log(JSON.stringify({ sent }));
        socket.close();
      }, 200);
    }
  };
  tick();
} else {
  const seconds = Number(third);
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  const seen = new Set<number>();
  const delays: number[] = [];
  let highest = -1;
  let duplicates = 0;
  socket.on('message', (message) => {
    if (message.length < 12) {
      return;
    }
    const sequence = message.readUInt32BE(0);
    if (seen.has(sequence)) {
      duplicates++;
      return;
    }
    seen.add(sequence);
    highest = Math.max(highest, sequence);
    delays.push(nowMs() - message.readDoubleBE(4));
  });
  const first = Number(address.split('.')[0]);
  socket.bind(port, first >= 224 && first <= 239 ? address : address, () => {
    socket.setRecvBufferSize(4 * 1024 * 1024);
    if (first >= 224 && first <= 239) {
      socket.addMembership(address, fourth || undefined);
    }
    console.error('listening');
  });
  setTimeout(() => {
    delays.sort((a, b) => a - b);
    const at = (q: number) => delays[Math.min(delays.length - 1, Math.floor(q * delays.length))] ?? 0;
    console.log(
      JSON.stringify({
        received: seen.size,
        highest,
        duplicates,
        p50: at(0.5),
        p99: at(0.99),
        max: delays.at(-1) ?? 0,
      }),
    );
    socket.close();
  }, seconds * 1000);
}
void fifth;
