/**
 * `gatecast daemon` starting its roles (src/cli/daemon-command.ts): a stop asked for while the
 * roles start (SIGTERM from systemd during a slow start) starts no further role, so the daemon
 * stops within its budget instead of first starting every role of the file.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import type { RunningRole } from '../../src/cli/daemon.js';
import { type PlannedRole, startAll } from '../../src/cli/daemon-command.js';

const quiet = new Writable({ write: (_chunk, _encoding, done) => done() });

describe('gatecast daemon starting its roles', () => {
  it('a stop asked for while the first role starts starts no further role (regression: it started them all first)', async () => {
    let stopAsked = false;
    const startedNames: string[] = [];
    const closedNames: string[] = [];
    const role = (name: string): PlannedRole => ({
      name,
      values: {},
      start: async () => {
        startedNames.push(name);
        // The stop (a signal) arrives while this role starts.
        stopAsked = true;
        const running: RunningRole = {
          command: name,
          status: () => ({ role: name }),
          line: () => name,
          close: async () => {
            closedNames.push(name);
          },
        };
        return running;
      },
    });
    const started = await startAll({ roles: [role('serve'), role('retransmit[0]')] }, quiet, () => stopAsked);
    assert.deepEqual(startedNames, ['serve']);
    assert.deepEqual(
      started.map(({ name }) => name),
      ['serve'],
    );
    for (const { supervision, role: running } of started) {
      await supervision.stop('SIGTERM');
      await running.close();
    }
    assert.deepEqual(closedNames, ['serve']);
  });
});
