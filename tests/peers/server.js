// The Node server the tests run: listens on the inherited descriptor 3, answers with its pid,
// and on SIGTERM closes its server (finishing the requests in flight) and exits.
const http = require('node:http');

const server = http.createServer((req, res) => {
  res.setHeader('content-type', 'text/plain');
  res.end(`pid ${process.pid}`);
});
server.listen({ fd: 3 });
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
