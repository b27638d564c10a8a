// The peer: Node.js's built-in cluster module serving the same response as hello-http.
// /busy?ms=N keeps the worker busy for N ms before it answers.
// NODE_CLUSTER_SCHED_POLICY=rr|none selects the scheduling policy; WORKERS the count.
// SIGUSR2 replaces the workers one by one, as PM2's reload does: a new worker listening,
// then the old one disconnected (its server closes, it exits when its connections end).
// (SIGUSR1 is Node's debugger signal.)
// Usage: node cluster.js PORT
const cluster = require('node:cluster');
const http = require('node:http');

const workers = parseInt(process.env.WORKERS || '2', 10);
const port = parseInt(process.argv[2], 10);

if (cluster.isPrimary) {
  const retiring = new Set();
  let stopping = false;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', (worker) => {
    if (!stopping && !retiring.delete(worker.id)) cluster.fork();
  });
  let restarting = false;
  process.on('SIGUSR2', async () => {
    if (restarting) return;
    restarting = true;
    for (const old of Object.values(cluster.workers)) {
      const fresh = cluster.fork();
      await new Promise((ready) => fresh.once('listening', ready));
      retiring.add(old.id);
      old.disconnect();
    }
    restarting = false;
  });
  const stop = () => {
    stopping = true;
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  http
    .createServer((req, res) => {
      // /busy?ms=N keeps the worker busy that long first, as hello-http's does.
      const busy = req.url.startsWith('/busy?ms=') ? parseInt(req.url.slice(9), 10) : 0;
      if (busy > 0) {
        const end = Date.now() + Math.min(busy, 60000);
        while (Date.now() < end) { /* occupied */ }
      }
      res.setHeader('x-cluster-worker', String(cluster.worker.id));
      res.end('Hello, World!');
    })
    .listen(port, '127.0.0.1');
}
