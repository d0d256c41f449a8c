"""The Logstash sink: Lumberjack v2 (what Filebeat's logstash output speaks to Logstash's beats input),
JSON lines over TCP or TLS (Logstash's tcp input with the json_lines codec), or NDJSON over HTTP(S) (its http
input).

    config.py      keys, hosts, protocol; the document Filebeat's docker input would have sent
    lumberjack.py  the wire format: named frame constants, window framing, ACK frames (pure, tested to the byte)
    window.py      the adaptive window (grow after success, shrink after an error or a timeout)
    beats.py       one Lumberjack connection: windows pipelined, ACKs read exactly, keep-alives, timeout
    balance.py     hosts: state and backoff per host, load balancing or failover, windows moved off a dead host
    jsonlines.py   JSON lines on a stream whose TCP acknowledgements say what was delivered
    http.py        NDJSON batches over aiohttp: auth, headers, gzip, Retry-After
    sink.py        the Sink: encode once, send by protocol
"""
