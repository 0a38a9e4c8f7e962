// Node's cluster module beside benches/respawn.rs: from a worker's crash to
// its replacement listening again (the `listening` callback in the new
// worker), median of 20. A lower bound on "to the next connection accepted",
// which is what the forkless figure measures. With its only worker gone,
// Node's primary closes the shared listening socket, so connections that
// arrive in between are refused; the forkless slot keeps its socket.
// Run by `cargo bench --bench respawn` when node is installed. Prints one line
// of JSON: the samples in microseconds.
'use strict';
const cluster = require('node:cluster');
const net = require('node:net');

const ROUNDS = 20;
// CLOCK_MONOTONIC in microseconds: the same clock in every process.
const now = () => Number(process.hrtime.bigint() / 1000n);

if (cluster.isPrimary) {
  let port = 0;
  let crashedAt = 0;
  const samples = [];
  // What strong-cluster-control and PM2 do, minus their throttling.
  cluster.on('exit', () => cluster.fork({ BENCH_PORT: String(port) }));
  cluster.on('message', (_worker, msg) => {
    if (msg.crashedAt) {
      crashedAt = msg.crashedAt;
      return;
    }
    if (port === 0) {
      port = msg.port;
    } else {
      samples.push(msg.listeningAt - crashedAt);
    }
    if (samples.length === ROUNDS) {
      cluster.removeAllListeners('exit');
      for (const id in cluster.workers) cluster.workers[id].kill();
      process.stdout.write(JSON.stringify({ samples }) + '\n', () => process.exit(0));
      return;
    }
    const crash = net.connect(port, '127.0.0.1', () => crash.write('c'));
    crash.on('error', () => {});
  });
  cluster.fork({ BENCH_PORT: '0' });
} else {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.on('data', (data) => {
      if (data[0] === 0x63 /* c */) {
        process.send({ crashedAt: now() }, () => process.exit(1));
      }
    });
  });
  server.listen(Number(process.env.BENCH_PORT), '127.0.0.1', () => {
    process.send({ port: server.address().port, listeningAt: now() });
  });
}
