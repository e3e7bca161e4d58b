// Owns who may open which export over TLS (--tls-authz): QEMU's model of client certificate
// distinguished names and PSK identities, each mapped to export globs, read-only or read-write.
import * as fs from 'node:fs';
import { BlkError } from '../../errors.js';

/** Who the TLS handshake says the peer is: a client certificate's subject, or a PSK identity. */
export type PeerIdentity = { kind: 'x509'; dn: string } | { kind: 'psk'; identity: string };

export type ExportAccess = 'rw' | 'ro';

/** What one peer may open: the access to an export by name, or null (refused: NBD_REP_ERR_POLICY). */
export type ExportPolicy = (exportName: string) => ExportAccess | null;

/** Everything, as the device itself allows: the Unix socket, and TLS without --tls-authz. */
export const OPEN_POLICY: ExportPolicy = () => 'rw';

interface Rule {
  kind: 'x509' | 'psk';
  identity: RegExp;
  exports: RegExp[];
  access: ExportAccess;
}

/** `*` any run of characters, `?` one, everything else itself. */
export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`, 's');
}

/** RFC 4514's order (most specific first: "CN=host,O=Example"), as GnuTLS and so QEMU print a DN. */
export function distinguishedName(subjectLines: string): string {
  return subjectLines
    .split('\n')
    .filter((l) => l !== '')
    .reverse()
    .join(',');
}

/**
 * The rules of an authz file: JSON, `{"rules": [{"dn" | "psk": IDENTITY, "exports": [GLOB...],
 * "access": "ro" | "rw"}]}`. The first rule whose identity and one of whose globs match decides.
 */
export class TlsAuthz {
  readonly file: string;
  #rules: Rule[];

  private constructor(file: string, rules: Rule[]) {
    this.file = file;
    this.#rules = rules;
  }

  static read(file: string): TlsAuthz {
    let doc: unknown;
    try {
      doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      throw new BlkError('EINVAL', `--tls-authz ${file}: ${(e as Error).message}`);
    }
    return new TlsAuthz(file, TlsAuthz.#parse(doc, file));
  }

  static #parse(doc: unknown, file: string): Rule[] {
    const rules = (doc as { rules?: unknown })?.rules;
    if (!Array.isArray(rules)) throw new BlkError('EINVAL', `--tls-authz ${file}: expected {"rules": [...]}`);
    return rules.map((r: unknown, i) => {
      const at = `--tls-authz ${file}: rules[${i}]`;
      const rule = r as { dn?: unknown; psk?: unknown; exports?: unknown; access?: unknown };
      if (typeof rule !== 'object' || rule === null) throw new BlkError('EINVAL', `${at} is not an object`);
      const hasDn = typeof rule.dn === 'string' && rule.dn !== '';
      const hasPsk = typeof rule.psk === 'string' && rule.psk !== '';
      if (hasDn === hasPsk) throw new BlkError('EINVAL', `${at} needs exactly one of "dn" (a client certificate's subject) and "psk" (an identity)`);
      if (!Array.isArray(rule.exports) || rule.exports.length === 0 || !rule.exports.every((g) => typeof g === 'string' && g !== '')) {
        throw new BlkError('EINVAL', `${at}: "exports" must be a list of export names or globs`);
      }
      if (rule.access !== 'ro' && rule.access !== 'rw') throw new BlkError('EINVAL', `${at}: "access" must be "ro" or "rw"`);
      return {
        kind: hasDn ? 'x509' : 'psk',
        identity: globToRegExp(hasDn ? (rule.dn as string) : (rule.psk as string)),
        exports: (rule.exports as string[]).map(globToRegExp),
        access: rule.access,
      };
    });
  }

  /** What a peer may open; a peer without an identity may open nothing. */
  policyFor(peer: PeerIdentity | null): ExportPolicy {
    if (peer === null) return () => null;
    const name = peer.kind === 'x509' ? peer.dn : peer.identity;
    const mine = this.#rules.filter((r) => r.kind === peer.kind && r.identity.test(name));
    return (exportName) => mine.find((r) => r.exports.some((g) => g.test(exportName)))?.access ?? null;
  }
}
