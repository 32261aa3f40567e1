import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { dropsFromProcText } from '../../src/net/socket-drops.js';
import { openReceiverSocket } from '../../src/net/udp.js';
import { freshPort, loopbackIface } from '../helpers/loopback.js';
import { waitUntil } from '../helpers/wait.js';

const udp4 = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:1388 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4711 2 0000000000000000 17
  124: 0100007F:1389 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4712 2 0000000000000000 0
`;

describe('kernel drops per socket', () => {
  it('reads the drops of the socket with the inode asked for, and nothing for another', () => {
    assert.equal(dropsFromProcText(udp4, 4711), 17);
    assert.equal(dropsFromProcText(udp4, 4712), 0);
    assert.equal(dropsFromProcText(udp4, 99), undefined);
    assert.equal(dropsFromProcText('sl local_address inode\n 1: 0 0 0 0 0 0 0 0 4711', 4711), undefined);
  });

  it('counts what the kernel dropped for a receiving socket whose process did not read', {
    skip: existsSync('/proc/net/udp') ? false : 'needs Linux /proc/net/udp',
  }, async () => {
    const port = freshPort();
    const group = { address: '239.77.1.1', port, family: 4 as const };
    let received = 0;
    const socket = await openReceiverSocket({ group, iface: loopbackIface, receiveBufferBytes: 4096 }, () => {
      received++;
    });
    try {
      assert.equal(socket.kernelDrops?.(), 0);
      // Another process sends 300 datagrams of 1000 bytes while this one is blocked: the socket's
      // small buffer overflows, and the kernel counts what it dropped.
      const sender = `const s=require('node:dgram').createSocket('udp4');s.bind(0,'127.0.0.1',()=>{s.setMulticastInterface('127.0.0.1');let n=0;const go=()=>{for(let i=0;i<50&&n<300;i++,n++)s.send(Buffer.alloc(1000),${port},'239.77.1.1');if(n<300)setImmediate(go);else s.close()};go()})`;
      const result = spawnSync(process.execPath, ['-e', sender], { timeout: 20_000 });
      assert.equal(result.status, 0, String(result.stderr));
      await waitUntil('the kernel counted drops', () => (socket.kernelDrops?.() ?? 0) > 0, 5_000);
      const drops = socket.kernelDrops?.() ?? 0;
      await waitUntil('queued datagrams read', () => received + drops >= 300, 5_000).catch(() => undefined);
      assert.ok(received < 300, `received ${received} of 300 with a 4 KiB buffer`);
      assert.ok(drops > 0 && drops <= 300 - received, `drops ${drops}, received ${received}`);
    } finally {
      await socket.close();
    }
  });
});
