// kinesalite for `make bench`: `node bench/kinesalite.js PORT` serves Kinesis on 127.0.0.1:PORT.
// Beside kinesalite's own API it answers three bench-only paths, all counted at the service:
//   GET  /__bench/stats      PutRecords calls, records, failed entries, request bytes, the
//                            records of each call, and the time of the first call's arrival
//                            and the last call's answer (ms since the epoch)
//   POST /__bench/reset      zero those counters
//   POST /__bench/listen?port=P  also serve the same store on 127.0.0.1:P (a service "coming back")
const http = require('http')
const kinesalite = require('kinesalite')

const server = kinesalite({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100})
const kinesis = server.listeners('request')[0]
server.removeAllListeners('request')

let stats
function reset() {
  stats = {calls: 0, records: 0, failed: 0, errors: 0, bytes: 0, per_call: [], first_ms: null, last_ms: null}
}
reset()

function answer(res, code, doc) {
  const body = JSON.stringify(doc)
  res.writeHead(code, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body)})
  res.end(body)
}

function handle(req, res) {
  if (req.url.startsWith('/__bench/')) {
    const url = new URL(req.url, 'http://127.0.0.1')
    if (url.pathname === '/__bench/stats') return answer(res, 200, stats)
    if (url.pathname === '/__bench/reset') { reset(); return answer(res, 200, {}) }
    if (url.pathname === '/__bench/listen') {
      const extra = http.createServer(handle)
      extra.on('error', (err) => answer(res, 500, {error: String(err)}))
      return extra.listen(Number(url.searchParams.get('port')), '127.0.0.1', () => answer(res, 200, {}))
    }
    return answer(res, 404, {})
  }
  if (req.headers['x-amz-target'] === 'Kinesis_20131202.PutRecords') {
    const arrived = Date.now()
    const bytes = Number(req.headers['content-length'] || 0)
    const end = res.end
    res.end = function (body, ...rest) {
      let records = 0, failed = 0
      if (res.statusCode === 200) {
        try {
          const doc = JSON.parse(body)
          records = doc.Records.length
          failed = doc.FailedRecordCount || 0
        } catch (err) { /* not a PutRecords answer we can read */ }
      }
      if (records) {
        stats.calls += 1
        stats.records += records - failed
        stats.failed += failed
        stats.bytes += bytes
        stats.per_call.push(records)
        if (stats.first_ms === null) stats.first_ms = arrived
        stats.last_ms = Date.now()
      } else {
        stats.errors += 1
      }
      return end.call(this, body, ...rest)
    }
  }
  return kinesis(req, res)
}

server.on('request', handle)
server.listen(Number(process.argv[2]), '127.0.0.1')
