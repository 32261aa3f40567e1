/**
 * The baseline of the throughput benchmark: plain node:dgram multicast of 1400-byte payloads, with
 * the same batching a tuned sender uses (64 sends, then yield) and a 4 MiB receive buffer.
 * Usage: raw-udp.ts send GROUP:PORT IFACE_ADDR SECONDS | receive GROUP:PORT IFACE_ADDR SECONDS
 * Prints one JSON line: packets, bytes, seconds.
 */
import { createSocket } from 'node:dgram';

const [mode, groupText, ifaceAddress, secondsText] = process.argv.slice(2);
const [group, portText] = (groupText ?? '').split(':');
const port = Number(portText);
const seconds = Number(secondsText);
const payloadBytes = 1400;

if (mode === 'send') {
  const socket = createSocket('udp4');
  socket.bind(0, ifaceAddress, () => {
    socket.setMulticastInterface(ifaceAddress ?? '');
    socket.setMulticastTTL(16);
    socket.setSendBufferSize(4 * 1024 * 1024);
    const payload = Buffer.alloc(payloadBytes, 0x5a);
    let packets = 0;
    let inFlight = 0;
    const started = performance.now();
    const deadline = started + seconds * 1000;
    const done = () => inFlight--;
    const pump = () => {
      if (performance.now() >= deadline) {
        const elapsed = (performance.now() - started) / 1000;
        console.log(JSON.stringify({ packets, bytes: packets * payloadBytes, seconds: elapsed }));
        socket.close();
        return;
      }
      for (let i = 0; i < 64 && inFlight < 512; i++) {
        inFlight++;
        socket.send(payload, port, group, done);
        packets++;
      }
      setImmediate(pump);
    };
    pump();
  });
} else {
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  let packets = 0;
  let bytes = 0;
  let first = 0;
  let last = 0;
  socket.on('message', (message) => {
    if (packets === 0) {
      first = performance.now();
    }
    packets++;
    bytes += message.length;
    last = performance.now();
  });
  socket.bind(port, group, () => {
    socket.setRecvBufferSize(4 * 1024 * 1024);
    socket.addMembership(group ?? '', ifaceAddress);
    console.error('joined');
  });
  setTimeout(() => {
    console.log(JSON.stringify({ packets, bytes, seconds: (last - first) / 1000 }));
    socket.close();
  }, seconds * 1000);
}
