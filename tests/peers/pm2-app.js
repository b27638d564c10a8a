// The Node app PM2 runs in cluster mode for the restart comparison: listens on PORT itself
// (PM2's cluster mode shares it through Node's cluster module) and answers with its pid.
const http = require('node:http');

http
  .createServer((req, res) => res.end(`pid ${process.pid}`))
  .listen(parseInt(process.env.PORT, 10), '127.0.0.1');
