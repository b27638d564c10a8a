// WebSocket sessions from Node's `ws` client with permessage-deflate (every message
// compressed: threshold 0), each sending a numbered message, waiting for the reply of
// `ws-echo` (`N COUNT PID`) and checking it, then sending the next 100 ms later, until the
// server closes it or 20 s pass. Prints one
// JSON line: sessions, replies, wrong replies, the extensions each session negotiated, and
// how each ended (close codes; 1006 is abnormal).
// Usage: node deflate_client.js ws://127.0.0.1:PORT/ws SESSIONS
const path = require('node:path');
const WebSocket = require(path.join(__dirname, '../../target/peers/node_modules/ws'));

const [url, count] = [process.argv[2], Number(process.argv[3] || 10)];
const result = { sessions: count, replies: 0, wrong: 0, extensions: [], closes: {} };
let open = count;

function session(index) {
  const socket = new WebSocket(url, { perMessageDeflate: { threshold: 0 } });
  let number = 0;
  let timer;
  const next = (delay) => {
    timer = setTimeout(() => socket.send(String(number)), delay);
  };
  socket.on('open', () => {
    result.extensions.push(socket.extensions);
    next((100 * index) / count);
  });
  socket.on('message', (data) => {
    const [n, received] = data.toString().split(' ').map(Number);
    if (n === number && received === number + 1) {
      result.replies += 1;
    } else {
      result.wrong += 1;
    }
    number += 1;
    next(100);
  });
  socket.on('close', (code) => {
    clearTimeout(timer);
    result.closes[code] = (result.closes[code] || 0) + 1;
    if (--open === 0) finish();
  });
  socket.on('error', () => {});
}

function finish() {
  console.log(JSON.stringify(result));
  process.exit(0);
}

for (let i = 0; i < count; i++) session(i);
setTimeout(finish, 20000);
