// backup_prune's policy: applied per host and device by default, so a busy host's backups never push
// a quiet one's out; each kept backup says by which rules; a backup of two devices goes only where
// neither group keeps it; hourly, monthly, yearly and within-a-duration rules; --group-by none
// counts everything together.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { applyPolicy, byRecordedTime, keptBy, type PolicyBackup } from '../../../src/backup/retention-policy.js';

const HOUR = 3_600_000;

function backup(id: string, hoursAgo: number, host: string, devices: string[], now: number): PolicyBackup {
  return { id, time: new Date(now - hoursAgo * HOUR).toISOString(), host, devices: devices.map((name) => ({ name })) };
}

describe('retention policy', () => {
  const now = Date.parse('2026-12-07T12:30:00.000Z');
  // Host a backs up disk d every hour; host b once, two days ago.
  const list = [...Array.from({ length: 10 }, (_, i) => backup(`a${i}`, i, 'a', ['d'], now)), backup('b0', 48, 'b', ['d'], now)];

  it('per host and device by default: a quiet host keeps its backup; each kept one names its rules', () => {
    const { backups } = byRecordedTime(list, now);
    const { groups, kept } = applyPolicy(backups, { keepLast: 2, keepHourly: 3 });
    assert.deepEqual([...kept].sort(), ['a0', 'a1', 'a2', 'b0']);
    const a = groups.find((g) => g.host === 'a');
    assert.deepEqual(a?.keep, [
      { id: 'a0', reasons: ['last', 'hourly 2026-12-07T12'] },
      { id: 'a1', reasons: ['last', 'hourly 2026-12-07T11'] },
      { id: 'a2', reasons: ['hourly 2026-12-07T10'] },
    ]);
    assert.deepEqual(a?.remove, ['a3', 'a4', 'a5', 'a6', 'a7', 'a8', 'a9']);
    assert.deepEqual(groups.find((g) => g.host === 'b'), { host: 'b', device: 'd', keep: [{ id: 'b0', reasons: ['last', 'hourly 2026-12-05T12'] }], remove: [] });
  });

  it('--group-by none counts every backup together: the quiet host\'s goes', () => {
    const { backups } = byRecordedTime(list, now);
    const { kept } = applyPolicy(backups, { keepLast: 2 }, 'none');
    assert.deepEqual([...kept].sort(), ['a0', 'a1']);
  });

  it('a backup of two devices goes only where no group keeps it', () => {
    const two = [backup('x-new', 1, 'h', ['d1'], now), backup('x-both', 2, 'h', ['d1', 'd2'], now)];
    const { backups } = byRecordedTime(two, now);
    const { groups, kept } = applyPolicy(backups, { keepLast: 1 });
    assert.deepEqual([...kept].sort(), ['x-both', 'x-new'], 'the newest of d2');
    assert.deepEqual(groups.find((g) => g.device === 'd1')?.remove, [], 'not removed from d1 either: d2 keeps it');
  });

  it('monthly, yearly and within a duration of the newest', () => {
    const long = [0, 24 * 20, 24 * 40, 24 * 400, 24 * 800].map((h, i) => backup(`m${i}`, h, 'h', ['d'], now));
    const { backups } = byRecordedTime(long, now);
    assert.deepEqual([...keptBy(backups, { keepLast: 1, keepMonthly: 2 }).keys()], ['m0', 'm1']);
    assert.deepEqual([...keptBy(backups, { keepLast: 1, keepYearly: 3 }).keys()], ['m0', 'm3', 'm4']);
    assert.deepEqual([...keptBy(backups, { keepLast: 1, keepWithinMs: 30 * 24 * HOUR }).keys()], ['m0', 'm1']);
    assert.throws(() => keptBy(backups, { keepLast: 0 }), /EINVAL|--keep-last takes 1 or more/);
  });
});
