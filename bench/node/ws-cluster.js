// The Node peer of the WebSocket comparison: the `ws` package's echo under Node's cluster
// module. SIGHUP replaces the workers one by one, the usual zero-downtime pattern (and
// PM2's reload): a new worker listening, then the old one disconnected (its server stops
// accepting; it exits when its connections end), and killed after KILL_TIMEOUT ms (PM2's
// kill_timeout) if its WebSockets keep it alive.
// Usage: node ws-cluster.js PORT   (ws from target/peers/node_modules)
const cluster = require('node:cluster');
const http = require('node:http');
const path = require('node:path');

const workers = parseInt(process.env.WORKERS || '2', 10);
const killTimeout = parseInt(process.env.KILL_TIMEOUT || '5000', 10);
const port = parseInt(process.argv[2], 10);

if (cluster.isPrimary) {
  const retiring = new Set();
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', (worker) => {
    if (!retiring.delete(worker.id)) cluster.fork();
  });
  let restarting = false;
  process.on('SIGHUP', async () => {
    if (restarting) return;
    restarting = true;
    for (const old of Object.values(cluster.workers)) {
      const fresh = cluster.fork();
      await new Promise((ready) => fresh.once('listening', ready));
      retiring.add(old.id);
      old.disconnect();
      setTimeout(() => old.process.kill('SIGKILL'), killTimeout).unref();
    }
    restarting = false;
  });
  process.on('SIGTERM', () => {
    for (const w of Object.values(cluster.workers)) retiring.add(w.id), w.process.kill('SIGKILL');
    process.exit(0);
  });
} else {
  const { WebSocketServer } = require(path.join(__dirname, '../../target/peers/node_modules/ws'));
  const server = http.createServer((req, res) => res.end('ws only\n'));
  const wss = new WebSocketServer({ server, path: '/ws' });
  wss.on('connection', (socket) => {
    socket.on('message', (data, binary) => socket.send(data, { binary }));
  });
  server.listen(port, '127.0.0.1');
}
