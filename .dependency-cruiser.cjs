// The layers of src/, lowest first, and what each may import: docs/design.md draws this picture.
// `npm test` runs `npm run layers` (depcruise): a cycle, or an import a layer may not make, fails it.
const layers = {
  // The ground: errors, tunables, sizes, the daemon's help text.
  base: { path: '^src/(errors|params|sizes|version|blksnapd-help)\\.ts$', may: [] },
  os: { path: '^src/os/', may: ['base'] },
  util: { path: '^src/util/', may: ['base', 'os'] },
  // The NBD wire (server and client), durable CBT, stores, the repository format, the control protocol.
  nbd: { path: '^src/nbd/', may: ['base', 'os', 'util'] },
  cbt: { path: '^src/cbt/', may: ['base', 'os', 'util'] },
  backing: { path: '^src/backing/', may: ['base', 'os', 'util'] },
  repository: { path: '^src/repository/', may: ['base', 'os', 'util'] },
  control: { path: '^src/control/', may: ['base', 'os', 'util'] },
  // The device core: trackers, snapshots, copy-on-write, images. No protocol.
  core: { path: '^src/core/', may: ['base', 'os', 'util', 'cbt', 'backing'] },
  // Front ends speak a protocol to the core.
  frontends: { path: '^src/frontends/', may: ['base', 'os', 'util', 'nbd', 'core', 'backing'] },
  // The client library: the control protocol and the NBD wire.
  client: { path: '^src/client/', may: ['base', 'os', 'util', 'nbd', 'control'] },
  // The backup programs, above the repository format and the client (the attach store is a Storage).
  backup: { path: '^src/backup/', may: ['base', 'os', 'util', 'repository', 'client', 'control', 'backing'] },
  // The daemon wires everything it serves.
  daemon: { path: '^src/daemon/', may: ['base', 'os', 'util', 'nbd', 'cbt', 'backing', 'control', 'core', 'frontends', 'backup'] },
  // The command line and the package's face sit on top.
  cli: { path: '^src/cli/', may: ['base', 'os', 'util', 'control', 'client', 'repository', 'backup'] },
  face: { path: '^src/index\\.ts$', may: ['base', 'control', 'client', 'repository', 'backup'] },
};

const within = (names) => names.map((n) => layers[n].path);

module.exports = {
  forbidden: [
    { name: 'no-circular', severity: 'error', comment: 'Files that import each other in a loop cannot be understood one at a time.', from: {}, to: { circular: true } },
    ...Object.entries(layers).map(([name, layer]) => ({
      name: `${name}-imports`,
      severity: 'error',
      comment: `${name} may import only: ${layer.may.join(', ') || 'nothing of src/'}`,
      from: { path: layer.path },
      to: { path: '^src/', pathNot: [layer.path, ...within(layer.may)] },
    })),
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(dist|node_modules)/' },
  },
};
