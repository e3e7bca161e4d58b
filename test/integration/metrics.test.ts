// blksnapd --metrics: Prometheus text over HTTP on loopback, scraped with curl; the request counters,
// bytes and latency histogram move with fio's writes; device, CBT and snapshot gauges are there.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { check, missing, run, sparseFile, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;

/** A sample's value, by metric name and labels (each as Prometheus writes it, in any order). */
function sample(text: string, name: string, ...labels: string[]): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && labels.every((x) => l.includes(x)));
  return line === undefined ? Number.NaN : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('metrics', { skip: missing('curl', 'fio') }, () => {
  it('serves Prometheus text on loopback; NBD counters follow fio; device, CBT and snapshot gauges', async () => {
    const { dir, remove } = tempDir('blksnapd-metrics-');
    const disk = sparseFile(path.join(dir, 'm.img'), 64 * MiB);
    const daemon = await TestDaemon.startIn(dir, remove, ['--attach', `${disk}=m`, '--metrics', '0']);
    try {
      const url = /metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(daemon.log)?.[1];
      assert.ok(url, `the daemon says where: ${daemon.log}`);
      const before = await check('curl', ['-sf', url]);
      assert.match(before, /^# HELP blksnap_nbd_requests_total/m);
      assert.equal(sample(before, 'blksnap_device_size_bytes', 'device="m"'), 64 * MiB);
      const requestsBefore = sample(before, 'blksnap_nbd_requests_total', 'command="write"');
      await check('fio', ['--name=m', '--ioengine=nbd', `--uri=${daemon.uri('m')}`, '--rw=randwrite', '--bs=4k', '--iodepth=8', '--size=16m', '--io_size=16m', '--output-format=terse']);
      const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'm', '--file', dir, '--limit', '256M');
      await daemon.json('snapshot_take', '--id', id);
      await check('qemu-io', ['-f', 'raw', '-c', 'write 0 1M', daemon.uri('m')]);
      const after = await check('curl', ['-sf', url]);
      const writes = sample(after, 'blksnap_nbd_requests_total', 'export="m",command="write"') - (Number.isNaN(requestsBefore) ? 0 : requestsBefore);
      assert.ok(writes >= 4096, `${writes} write requests counted for fio's 4096 and qemu-io's`);
      assert.ok(sample(after, 'blksnap_nbd_bytes_total', 'export="m",command="write"') >= 17 * MiB);
      assert.ok(sample(after, 'blksnap_nbd_request_duration_seconds_count', 'export="m",command="write"') >= 4096);
      assert.ok(sample(after, 'blksnap_nbd_request_duration_seconds_bucket', 'command="write"', 'le="+Inf"') >= 4096);
      assert.equal(sample(after, 'blksnap_cbt_changes_number', 'device="m"'), 1);
      assert.equal(sample(after, 'blksnap_cbt_generation_info', 'device="m"'), 1);
      assert.ok(sample(after, 'blksnap_snapshot_diff_storage_used_bytes', `snapshot="${id}"`) >= MiB, 'the write after the take kept originals');
      assert.equal(sample(after, 'blksnap_snapshot_diff_storage_limit_bytes', `snapshot="${id}"`), 256 * MiB);
      assert.equal(sample(after, 'blksnap_snapshot_state', `phase="taken"`), 1);
      assert.match(after, /^blksnapd_process_cpu_seconds_total /m);
      assert.match(after, /^blksnap_nbd_connections \d+$/m);
      assert.match(after, /^blksnap_block_devices 0$/m);
      const notFound = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', url.replace('/metrics', '/other')]);
      assert.equal(notFound.stdout, '404');
      await daemon.json('snapshot_destroy', '--id', id);
    } finally {
      await daemon.stop();
    }
  });
});
