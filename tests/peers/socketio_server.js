// An unmodified Socket.IO 4 server on the inherited descriptor 3 (as under systemd): an
// "echo" event answered with the worker's pid, so a client sees which worker holds its
// session. Long-polling sessions live in the worker that made them: a request with a
// session id another worker made gets 400 "Session ID unknown".
const http = require('node:http');
const path = require('node:path');
const { Server } = require(path.join(__dirname, '../../target/peers/node_modules/socket.io'));

const server = http.createServer();
const io = new Server(server, { transports: ['polling'] });
io.on('connection', (socket) => {
  socket.on('echo', (text) => socket.emit('echo', `${text} from ${process.pid}`));
});
server.listen({ fd: 3 });
process.on('SIGTERM', () => {
  io.close();
  server.close(() => process.exit(0));
});
