// Node's cluster module serving `Hello, World!` on WORKERS workers (default:
// one per CPU) at PORT, as the benchmarks' Node peer. The primary forks and
// re-forks; each worker runs node:http.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

const port = Number(process.env.PORT || 8080);
const workers = Number(process.env.WORKERS || os.availableParallelism());

if (cluster.isPrimary) {
  let listening = 0;
  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) console.log(`listening on http://127.0.0.1:${port}`);
  });
  cluster.on('exit', () => cluster.fork());
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on('SIGTERM', () => {
    cluster.removeAllListeners('exit');
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  http
    .createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('Hello, World!');
    })
    .listen(port, '127.0.0.1');
}
