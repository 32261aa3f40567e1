/**
 * Flow B's SETUP sender: tells registered retransmit servers, by authenticated unicast SETUP, to
 * join (and buffer) or leave a source's session. SETUP is idempotent on the receiving side, so
 * each is sent a few times to ride out a lost datagram.
 */
import { type ControlKey, ControlSealer } from '../crypto/control-auth.js';
import { setupRepeatCount, setupRepeatIntervalMs } from '../limits.js';
import { parseEndpoint } from '../net/address.js';
import { nowMicroseconds } from '../net/clock.js';
import { type ControlSocket, openControlSocket } from '../net/udp.js';
import { encodeSetup, SetupAction } from '../protocol/control.js';
import type { SetupSender } from './context.js';

/** Opens the SETUP sender's sockets (one per address family, on any port). */
export async function openSetupSender(key: ControlKey): Promise<SetupSender & AsyncDisposable> {
  const sealer = new ControlSealer(key);
  const sockets = new Map<4 | 6, ControlSocket>();
  const socketFor = async (family: 4 | 6) => {
    let socket = sockets.get(family);
    if (socket === undefined) {
      socket = await openControlSocket(
        { address: family === 4 ? '0.0.0.0' : '::', port: 0, family },
        () => undefined,
      );
      sockets.set(family, socket);
    }
    return socket;
  };
  return {
    async send(action, session, servers) {
      const targets = servers.map((server) => parseEndpoint(server, 'server address'));
      for (let round = 0; round < setupRepeatCount; round++) {
        for (const target of targets) {
          const datagram = sealer.seal(
            encodeSetup(
              { sessionId: 0, sequence: round, timestampUs: nowMicroseconds() },
              {
                action: action === 'join' ? SetupAction.join : SetupAction.leave,
                group: session.group,
                port: session.port,
                source: session.source,
                bufferBytes: 0,
                bufferAgeMs: 0,
                target, // the server it is for: another one refuses it (docs/protocol.md, "SETUP")
              },
            ),
          );
          (await socketFor(target.family)).send(datagram, target.port, target.address);
        }
        if (round + 1 < setupRepeatCount) {
          await new Promise((resolve) => setTimeout(resolve, setupRepeatIntervalMs));
        }
      }
    },
    async [Symbol.asyncDispose]() {
      await Promise.all([...sockets.values()].map((socket) => socket.close()));
    },
  };
}
