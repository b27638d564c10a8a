// The peer: Node.js's built-in cluster module serving the same response as hello-http.
// NODE_CLUSTER_SCHED_POLICY=rr|none selects the scheduling policy; WORKERS the count.
// Usage: node cluster.js PORT
const cluster = require('node:cluster');
const http = require('node:http');

const workers = parseInt(process.env.WORKERS || '2', 10);
const port = parseInt(process.argv[2], 10);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', () => cluster.fork());
  const stop = () => {
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  http
    .createServer((req, res) => {
      res.setHeader('x-cluster-worker', String(cluster.worker.id));
      res.end('Hello, World!');
    })
    .listen(port, '127.0.0.1');
}
