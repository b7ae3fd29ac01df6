// Node's `net` module peer for benchmarks/realistic.py, in node's own idiom: one
// 'data' listener per socket splitting lines, replies of one chunk joined into one
// write(), pause() while write() reports back-pressure, and allowHalfOpen off, so a
// client's FIN ends our side once the replies are flushed (`echo status | nc -N`).
//
// Commands: `ping` -> pong, `echo WORDS` -> the words joined by single spaces,
// `status` -> 8 fields as aligned `key: value` lines, and JSON requests
// {"id": N, "cmd": "status"} -> {"id": N, "ok": true, "result": {...}} with Python's
// json.dumps separators (", ", ": ").
//
//   node node_net.js [--port 0] [--host] [--hz 60] [--work-ms 4]
//
// Prints the bound port as the first line of stdout. With --host, a 60 Hz frame timer
// does --work-ms of busy work; SIGUSR1/SIGUSR2 start/end a measuring window and print
// one JSON line of frame lateness and CPU figures (see _common.HostFrames).
'use strict';
const net = require('net');
const { performance } = require('perf_hooks');

const MAX_LINE = 65536;
const args = { port: 0, host: false, hz: 60, workMs: 0 };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--port') args.port = Number(process.argv[++i]);
  else if (a === '--host') args.host = true;
  else if (a === '--hz') args.hz = Number(process.argv[++i]);
  else if (a === '--work-ms') args.workMs = Number(process.argv[++i]);
  else throw new Error('unknown argument ' + a);
}

const state = {
  service: 'reactor-bench', version: '2.3.1', state: 'running', workers: 4,
  queued: 17, processed: 1048576, failed: 3, load: 0.75,
};

function status() {
  return {
    service: state.service, version: state.version, state: state.state,
    workers: state.workers, queued: state.queued, processed: state.processed,
    failed: state.failed, load: state.load,
  };
}

function renderText(obj) {
  const keys = Object.keys(obj);
  let width = 0;
  for (const k of keys) if (k.length > width) width = k.length;
  width += 1;
  let out = '';
  for (const k of keys) out += (k + ':').padEnd(width) + ' ' + String(obj[k]) + '\n';
  return out;
}

// JSON.stringify with Python's separators (", ", ": "), which the JSON replies use.
function dumps(v) {
  if (v === null || typeof v !== 'object') return JSON.stringify(v === undefined ? null : v);
  if (Array.isArray(v)) return '[' + v.map(dumps).join(', ') + ']';
  const parts = [];
  for (const k of Object.keys(v)) parts.push(JSON.stringify(k) + ': ' + dumps(v[k]));
  return '{' + parts.join(', ') + '}';
}

function jsonReply(line) {
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    return '{"id": null, "ok": false, "error": {"code": "bad_request"}}\n';
  }
  const id = req.id === undefined ? null : req.id;
  if (req.cmd === 'status') return dumps({ id, ok: true, result: status() }) + '\n';
  return dumps({ id, ok: false, error: { code: 'unknown_command' } }) + '\n';
}

const server = net.createServer({ noDelay: true }, (sock) => {
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (chunk) => {
    buf += chunk;
    const lines = buf.split('\n');
    buf = lines.pop();
    if (buf.length > MAX_LINE) { sock.destroy(); return; }
    let out = '';
    for (const raw of lines) {
      const line = raw.trim();
      if (!line) continue;
      if (line.charCodeAt(0) === 123) { out += jsonReply(line); continue; } // '{'
      const words = line.split(/\s+/);
      const cmd = words[0];
      if (cmd === 'ping') out += 'pong\n';
      else if (cmd === 'echo') out += words.slice(1).join(' ') + '\n';
      else if (cmd === 'status') out += renderText(status());
      else out += 'error unknown command\n';
    }
    if (out && !sock.write(out)) {
      sock.pause();
      sock.once('drain', () => sock.resume());
    }
  });
  sock.on('error', () => {});
});
server.on('error', (e) => { console.error(e); process.exit(1); });

server.listen({ host: '127.0.0.1', port: args.port, backlog: 1024 }, () => {
  if (args.host) startFrames();  // its signal handlers are in place before the port goes out
  process.stdout.write(server.address().port + '\n');
});

function startFrames() {
  const step = 1000 / args.hz;  // ms
  let due = performance.now() + step;
  let measuring = false, late = [], dropped = 0, workCpu = 0, t0 = 0, cpu0 = null;
  const reset = () => {
    late = []; dropped = 0; workCpu = 0; t0 = performance.now(); cpu0 = process.cpuUsage();
  };
  reset();
  process.on('SIGUSR1', () => { reset(); measuring = true; });
  process.on('SIGUSR2', () => {
    const wall = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(cpu0);
    measuring = false;
    const s = late.slice().sort((a, b) => a - b);
    const pct = (q) => (s.length ? s[Math.min(s.length - 1, Math.round(q * (s.length - 1)))] : null);
    process.stdout.write(JSON.stringify({
      frames: s.length, dropped, wall_s: wall, late_p50_ms: pct(0.5), late_p99_ms: pct(0.99),
      late_max_ms: pct(1), cpu_s: (c.user + c.system) / 1e6, work_cpu_s: workCpu, io_cpu_s: null,
    }) + '\n');
  });
  const frame = () => {
    const now = performance.now();
    if (now < due) { setTimeout(frame, Math.ceil(due - now)); return; }  // timers round down
    if (measuring) late.push(now - due);
    if (args.workMs > 0) {
      const c0 = process.cpuUsage();
      const end = now + args.workMs;
      while (performance.now() < end) { /* the host's own work */ }
      const c = process.cpuUsage(c0);
      workCpu += (c.user + c.system) / 1e6;
    }
    due += step;
    if (due < now) {
      const missed = Math.floor((now - due) / step) + 1;
      dropped += missed;
      due += missed * step;
    }
    setTimeout(frame, Math.max(0, Math.ceil(due - performance.now())));
  };
  setTimeout(frame, Math.ceil(step));
}
