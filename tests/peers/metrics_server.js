// An unmodified Node HTTP server on the inherited descriptor 3 (as under systemd) with
// prom-client's default registry: `app_requests_total` counts the requests it answered, and
// the one line an application adds under `cluster --listen` serves the registry on the port
// the watcher gave this worker (CLUSTER_METRICS_PORT), which the watcher reads and merges.
// At SIGTERM it stops accepting, finishes what it holds, and stays up 100 ms more so the
// watcher's last read (every 25 ms while a worker drains) sees its last request.
const http = require('node:http');
const path = require('node:path');
const client = require(path.join(__dirname, '../../target/peers/node_modules/prom-client'));

const requests = new client.Counter({ name: 'app_requests_total', help: 'Requests answered' });
const server = http.createServer((request, response) => {
  requests.inc();
  response.end(`hello from ${process.pid}\n`);
});
server.listen({ fd: 3 });
// The one line: the registry on the worker's own metrics port.
http.createServer(async (request, response) => {
  response.setHeader('content-type', client.register.contentType);
  response.end(await client.register.metrics());
}).listen(Number(process.env.CLUSTER_METRICS_PORT), '127.0.0.1');
process.on('SIGTERM', () => {
  server.close(() => setTimeout(() => process.exit(0), 100));
});
