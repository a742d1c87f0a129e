// An HTTP/1.1 server in Node.js for termscope's scenario tests (keep-alive, Content-Length).
//
// usage: node http_app.js PORT MODE
//   /          answers at once
//   /slow?s=N  prints "start <client port>", answers N seconds later
// modes, i.e. what SIGTERM does:
//   exit     exit at once (`process.on('SIGTERM', () => process.exit(0))`, a common pattern)
//   default  no handler: the default action kills the process
//   drain    stop accepting, close the idle keep-alive connections, answer the requests in
//            flight, then exit (a graceful app)
// Prints "listening" once it accepts connections.
'use strict';
const http = require('http');

const port = Number(process.argv[2]);
const mode = process.argv[3];

let closing = false;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const answer = (body) => {
    const head = {
      'Content-Type': 'text/plain',
      'Content-Length': Buffer.byteLength(body),
    };
    // Draining: the connection ends after this answer.
    if (closing) head.Connection = 'close';
    res.writeHead(200, head);
    res.end(body);
  };
  if (url.pathname === '/slow') {
    const seconds = Number(url.searchParams.get('s') || '2');
    console.log('start', req.socket.remotePort);
    setTimeout(() => answer('slow done\n'), seconds * 1000);
  } else {
    answer('ok\n');
  }
});
// Idle keep-alive connections stay open until the test stops the server.
server.keepAliveTimeout = 120000;
server.headersTimeout = 130000;
server.requestTimeout = 0;

if (mode === 'exit') {
  process.on('SIGTERM', () => process.exit(0));
} else if (mode === 'drain') {
  process.on('SIGTERM', () => {
    closing = true;
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  });
} else if (mode !== 'default') {
  console.error('unknown mode', mode);
  process.exit(2);
}

server.listen(port, '127.0.0.1', () => console.log('listening'));
