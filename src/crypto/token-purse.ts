/**
 * The token's purse interface (Purse in token.ts) over the purse module (purse.ts): a
 * pay-as-you-go key release becomes one authorize() of one crypto-period at the KEY message's
 * authenticated time, which debits the balance and writes a signed, hash-chained receipt. The
 * token has already checked the grant's window, so the purse sees the price, not the window.
 */
import { PurseError, type Purse as PurseModule } from './purse.js';
import type { Receipt } from './receipt.js';
import type { Purse } from './token.js';

/** Adapts a purse; `onReceipt` is told of every receipt written (the receiver reports them to billing). */
export function tokenPurse(purse: PurseModule, onReceipt?: (receipt: Receipt) => void): Purse {
  return {
    async debit(debit) {
      try {
        const { receipt } = await purse.authorize(
          {
            service: debit.service,
            mode: 'pay-as-you-go',
            validFromMs: 0,
            validToMs: Number.MAX_SAFE_INTEGER,
            rates: { perCryptoPeriod: debit.amountMinor },
          },
          { unit: 'crypto-period', quantity: 1, timeMs: Math.floor(debit.streamTimeUs / 1000) },
        );
        if (receipt !== undefined) {
          onReceipt?.(receipt);
        }
        return { ok: true };
      } catch (error) {
        if (!(error instanceof PurseError)) {
          throw error;
        }
        return {
          ok: false,
          reason: error.code === 'GATECAST_ERR_PURSE_EMPTY' ? 'purse-empty' : 'purse-unavailable',
          message: error.message,
        };
      }
    },
  };
}
