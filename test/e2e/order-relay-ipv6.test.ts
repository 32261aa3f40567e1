import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { repoRoot, testbedSkip } from '../helpers/testbed.js';

// An IPv6 relay joined and sent on whichever interface the kernel chose for the group: node reads
// only the scope of an IPv6 interface address, and the relay gave the bare address, so a channel
// was joined on the link's side (or another interface) and relayed out of the wrong one. Here the
// kernel's first choice for ff00::/8 is an interface that is neither the relay's inbound nor its
// outbound one.
describe('relay driver over IPv6 in a namespace with several interfaces', testbedSkip(), () => {
  const ns = `gc${randomBytes(3).toString('hex')}-relay6`;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });
  before(() => {
    ip('netns', 'add', ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    // Each interface with its peer in the same namespace: the peers send into the relay's inbound
    // interface (pin) and receive what it sends on its outbound one (pout).
    for (const name of ['other', 'out', 'in']) {
      ip('-n', ns, 'link', 'add', name, 'type', 'veth', 'peer', 'name', `p${name}`);
      ip('-n', ns, 'link', 'set', name, 'up');
      ip('-n', ns, 'link', 'set', `p${name}`, 'up');
    }
    ip('-n', ns, 'addr', 'add', 'fd00:81::1/64', 'dev', 'in', 'nodad');
    ip('-n', ns, 'addr', 'add', 'fd00:82::1/64', 'dev', 'out', 'nodad');
  });
  after(() => {
    execFileSync('ip', ['netns', 'delete', ns], { stdio: 'ignore' });
  });

  it('joins on the inbound interface and sends on the outbound one', () => {
    const script = `
      import { createSocket } from 'node:dgram';
      import { createRelayDriver } from ${JSON.stringify(join(repoRoot, 'src/order/relay.ts'))};
      import { readMemberships } from ${JSON.stringify(join(repoRoot, 'src/net/memberships.ts'))};
      const relay = createRelayDriver({ inbound: 'fd00:81::1', outbound: 'fd00:82::1' });
      const report = await relay.reconcile([
        { service: 'news', group: 'ff3e::8201', port: 5201, source: null, relayTo: '[ff3e::8202]:5202' },
      ]);
      const joined = readMemberships().filter((m) => m.group === 'ff3e::8201').map((m) => m.iface);
      // A box on the link's side: joined on the peer of the outbound interface.
      const box = createSocket({ type: 'udp6', reuseAddr: true });
      let arrived = 0;
      box.on('message', () => { arrived += 1; });
      await new Promise((resolve) => box.bind(5202, 'ff3e::8202', resolve));
      box.addMembership('ff3e::8202', '::%pout');
      const sender = createSocket('udp6');
      await new Promise((resolve) => sender.bind(0, resolve));
      sender.setMulticastInterface('::%pin');
      const deadline = Date.now() + 5000;
      while (arrived === 0 && Date.now() < deadline) {
        await new Promise((resolve) => sender.send('x', 5201, 'ff3e::8201', resolve));
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      console.log(JSON.stringify({ errors: report.errors, joined, arrived: arrived > 0, counters: relay.counters }));
      box.close();
      sender.close();
      await relay.close();
    `;
    const output = execFileSync(
      'ip',
      ['netns', 'exec', ns, process.execPath, '--import', 'tsx', '--input-type=module', '-e', script],
      { encoding: 'utf8', cwd: repoRoot, timeout: 60_000 },
    );
    const result = JSON.parse(output.trim().split('\n').at(-1) ?? '{}') as {
      errors: string[];
      joined: string[];
      arrived: boolean;
    };
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.joined, ['in']);
    assert.equal(result.arrived, true, output);
  });
});
