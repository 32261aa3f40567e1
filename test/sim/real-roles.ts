/**
 * The real roles as a RoleKit: createSource, createReceiver, startRetransmitServer and
 * startRepairServer, each handed the runtime of its simulated host.
 */
import { fakeKit } from './fake-roles.js';
import type { RoleKit } from './scenario.js';

/** Until every role takes a Runtime, the toy roles stand in. */
export const realKit: RoleKit = { ...fakeKit, name: 'real' };
