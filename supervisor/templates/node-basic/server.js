// The smallest preview: a plain Node.js HTTP server on the port the supervisor assigns.
const http = require("node:http");

const port = Number(process.env.PORT || 3000);
const started = new Date().toISOString();

const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true, started }));
    return;
  }
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(`<!doctype html>
<html>
  <head><meta charset="utf-8"><title>node-basic</title></head>
  <body>
    <h1>Hello from node-basic</h1>
    <p>Served by Node.js ${process.version} since ${started}.</p>
    <p>Edit <code>server.js</code> and restart to see changes.</p>
  </body>
</html>`);
});

server.listen(port, () => console.log(`node-basic listening on port ${port}`));
