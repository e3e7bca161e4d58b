// Owns which backups a prune keeps: a policy (keep the last N; the newest of each of the last N
// hours, days, ISO weeks, months and years that have one; everything within a duration of the group's
// newest) applied per group of backups, by default per host and device, so one machine's or disk's
// backups never push another's out. A backup of several devices is in a group per device, and kept
// when any of them keeps it. Times are the ones the manifests record.
import { BlkError } from '../errors.js';

export interface RetentionRules {
  keepLast: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  /** Keep every backup made within this long (ms) before the newest of its group. */
  keepWithinMs?: number;
}

/** The counting rules by the name backup_prune's options and a job file's keys give them. */
export const KEEP_COUNTS = {
  'keep-last': 'keepLast',
  'keep-hourly': 'keepHourly',
  'keep-daily': 'keepDaily',
  'keep-weekly': 'keepWeekly',
  'keep-monthly': 'keepMonthly',
  'keep-yearly': 'keepYearly',
} as const;

export type GroupBy = 'host,device' | 'device' | 'host' | 'none';
export const GROUP_BYS: readonly GroupBy[] = ['host,device', 'device', 'host', 'none'];

export interface PolicyBackup {
  id: string;
  time: string;
  host: string;
  devices: Array<{ name: string }>;
}

export interface RetentionGroup {
  host?: string;
  device?: string;
  /** Newest first, each with the rules that keep it. */
  keep: Array<{ id: string; reasons: string[] }>;
  remove: string[];
}

/** ISO 8601 week of a date, as YYYY-Www. */
function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86400000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

/** A backup dated more than this ahead of now was made by a host whose clock is wrong. */
const FUTURE_SLACK_MS = 24 * 3600 * 1000;

/** Backups newest first by the time their manifests record (ties by id); those dated far ahead of `now` named. */
export function byRecordedTime<T extends { id: string; time: string }>(list: T[], now = Date.now()): { backups: Array<T & { date: Date }>; warnings: string[] } {
  const backups = list
    .map((b) => ({ ...b, date: new Date(Number.isNaN(Date.parse(b.time)) ? 0 : Date.parse(b.time)) }))
    .sort((a, b) => b.date.getTime() - a.date.getTime() || (a.id < b.id ? 1 : -1));
  const warnings = backups
    .filter((b) => b.date.getTime() > now + FUTURE_SLACK_MS)
    .map((b) => `backup ${b.id} is dated ${b.date.toISOString()}, in the future: the clock of the host that made it is wrong, and it counts as the newest`);
  return { backups, warnings };
}

/** The rules that keep each backup of one group (newest first): an id absent from the map goes. */
export function keptBy(backups: Array<{ id: string; date: Date }>, rules: RetentionRules): Map<string, string[]> {
  if (!(rules.keepLast >= 1)) throw new BlkError('EINVAL', 'backup_prune: --keep-last takes 1 or more (a prune never removes every backup of a group)');
  const kept = new Map<string, string[]>();
  const keep = (id: string, reason: string): void => {
    const reasons = kept.get(id);
    if (reasons) reasons.push(reason);
    else kept.set(id, [reason]);
  };
  for (const b of backups.slice(0, rules.keepLast)) keep(b.id, 'last');
  const byPeriod = (n: number | undefined, rule: string, period: (d: Date) => string): void => {
    const seen = new Set<string>();
    for (const b of backups) {
      if (seen.size >= (n ?? 0)) break;
      const key = period(b.date);
      if (seen.has(key)) continue;
      seen.add(key);
      keep(b.id, `${rule} ${key}`);
    }
  };
  byPeriod(rules.keepHourly, 'hourly', (d) => d.toISOString().slice(0, 13));
  byPeriod(rules.keepDaily, 'daily', (d) => d.toISOString().slice(0, 10));
  byPeriod(rules.keepWeekly, 'weekly', isoWeek);
  byPeriod(rules.keepMonthly, 'monthly', (d) => d.toISOString().slice(0, 7));
  byPeriod(rules.keepYearly, 'yearly', (d) => d.toISOString().slice(0, 4));
  const newest = backups[0]?.date.getTime();
  if (rules.keepWithinMs !== undefined && newest !== undefined) for (const b of backups) if (newest - b.date.getTime() <= rules.keepWithinMs) keep(b.id, 'within');
  return kept;
}

/** The groups a backup belongs to (`groupBy`): a key and what it is, one per device where devices count. */
function groupsOf(b: PolicyBackup, groupBy: GroupBy): Array<{ key: string; host?: string; device?: string }> {
  const devices = b.devices.length > 0 ? b.devices.map((d) => d.name) : [''];
  switch (groupBy) {
    case 'none':
      return [{ key: '' }];
    case 'host':
      return [{ key: b.host, host: b.host }];
    case 'device':
      return devices.map((device) => ({ key: `\0${device}`, device }));
    default:
      return devices.map((device) => ({ key: `${b.host}\0${device}`, host: b.host, device }));
  }
}

/** The policy applied per group: the groups (each with what it keeps and why, and what it removes) and every id kept by any. */
export function applyPolicy(backups: Array<PolicyBackup & { date: Date }>, rules: RetentionRules, groupBy: GroupBy = 'host,device'): { groups: RetentionGroup[]; kept: Set<string> } {
  const members = new Map<string, { host?: string; device?: string; backups: Array<PolicyBackup & { date: Date }> }>();
  for (const b of backups) {
    for (const g of groupsOf(b, groupBy)) {
      let m = members.get(g.key);
      if (!m) {
        m = { ...(g.host !== undefined ? { host: g.host } : {}), ...(g.device !== undefined ? { device: g.device } : {}), backups: [] };
        members.set(g.key, m);
      }
      m.backups.push(b);
    }
  }
  const kept = new Set<string>();
  const groups: RetentionGroup[] = [];
  for (const m of members.values()) {
    const keep = keptBy(m.backups, rules);
    for (const id of keep.keys()) kept.add(id);
    groups.push({ ...(m.host !== undefined ? { host: m.host } : {}), ...(m.device !== undefined ? { device: m.device } : {}), keep: m.backups.filter((b) => keep.has(b.id)).map((b) => ({ id: b.id, reasons: keep.get(b.id) as string[] })), remove: m.backups.filter((b) => !keep.has(b.id)).map((b) => b.id) });
  }
  // A backup of several devices is removed only where no group keeps it.
  for (const g of groups) g.remove = g.remove.filter((id) => !kept.has(id));
  return { groups, kept };
}
