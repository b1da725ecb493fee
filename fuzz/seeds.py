#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/ (run from anywhere; deterministic).

Seeds are small, hand-made and meaningful: each is a valid case or one edge case, so the
fuzzer starts from inputs that reach deep code. The input formats are documented in
tunnel/src/fuzzing.rs (frames, local_answer) and server/src/fuzzing.rs (handshake, config, hop,
visitor_head).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# frames: mode byte, then records [tag u8][len u16 LE][payload].
MUX, CLIENT, SERVER = 0, 1, 2
WS_CLIENT, WS_SERVER = 0xFE, 0xFF
BINARY, TEXT, PING, PONG, CLOSE, FRAME, RAW, BIG, SETTLE = range(9)
MAX_MESSAGE = 1024 * 1024


def rec(tag, payload=b""):
    return struct.pack("<BH", tag, len(payload)) + payload


def big(n):
    return rec(BIG, struct.pack("<I", n))


# Multiplexer frames (tunnel/src/protocol.rs): type, flags, stream id, length, big-endian.
DATA, OPEN, HEADERS, RESET, WINDOW = range(5)
FIN, TRAILERS = 1, 2


def frame(typ, flags, stream, data=b"", length=None):
    n = len(data) if length is None else length
    return struct.pack(">BBII", typ, flags, stream, n) + data


def headers(pairs):
    out = struct.pack(">H", len(pairs))
    for k, v in pairs:
        out += struct.pack(">H", len(k)) + k + struct.pack(">I", len(v)) + v
    return out


def request(method, target, pairs):
    return (bytes([1, len(method)]) + method + struct.pack(">I", len(target)) + target
            + headers(pairs))


def response(status, pairs):
    return struct.pack(">H", status) + headers(pairs)


HOST = [(b"host", b"app.tunnel.example.com"), (b"x-forwarded-for", b"203.0.113.5"),
        (b"x-forwarded-proto", b"https")]
GET = request(b"GET", b"/hello?x=1", HOST)
POST = request(b"POST", b"/api", HOST + [(b"content-length", b"5")])
UPGRADE = request(b"GET", b"/ws", HOST + [(b"connection", b"upgrade"), (b"upgrade", b"websocket"),
                                          (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                                          (b"sec-websocket-version", b"13")])

frames = {
    # The multiplexer alone, against its model.
    "mux-streams": bytes([MUX]) + rec(BINARY, frame(OPEN, 0, 1, b"a") + frame(DATA, 0, 1, b"hi"))
    + rec(PING, b"p") + rec(BINARY, frame(DATA, FIN, 1)) + rec(PONG),
    "mux-close": bytes([MUX]) + rec(CLOSE) + rec(BINARY, b"after"),
    "mux-text": bytes([MUX]) + rec(TEXT, b"hi"),
    "mux-largest-message": bytes([MUX]) + big(MAX_MESSAGE) + rec(BINARY, b"!"),
    "mux-oversized-message": bytes([MUX]) + big(MAX_MESSAGE + 1),
    "mux-fragmented": bytes([MUX]) + rec(FRAME, b"\x02\x00" + frame(OPEN, FIN, 3, b"x")[:5])
    + rec(PING) + rec(FRAME, b"\x80\x00" + frame(OPEN, FIN, 3, b"x")[5:]),
    "mux-masked-by-server": bytes([MUX]) + rec(FRAME, b"\x82\x01masked"),
    "mux-reserved-bits": bytes([MUX]) + rec(FRAME, b"\xf2\x00rsv"),
    "mux-window-and-reset": bytes([MUX]) + rec(BINARY, frame(OPEN, 0, 1, b"h")
                                              + frame(WINDOW, 0, 1, struct.pack(">I", 5))
                                              + frame(RESET, 0, 1, struct.pack(">I", 0) + b"bye")),
    "mux-frame-cut": bytes([MUX]) + rec(BINARY, frame(DATA, 0, 1, b"abc", length=9)),
    # The client side: streams carrying requests to the forwarder.
    "client-get": bytes([CLIENT]) + rec(BINARY, frame(OPEN, FIN, 1, GET)) + rec(SETTLE),
    "client-post": bytes([CLIENT]) + rec(BINARY, frame(OPEN, 0, 1, POST)) + rec(SETTLE)
    + rec(BINARY, frame(DATA, FIN, 1, b"hello")) + rec(SETTLE),
    "client-upgrade": bytes([CLIENT]) + rec(BINARY, frame(OPEN, 0, 1, UPGRADE)) + rec(SETTLE)
    + rec(BINARY, frame(DATA, 0, 1, b"\x81\x02hi")),
    "client-many": bytes([CLIENT]) + rec(BINARY, b"".join(frame(OPEN, FIN, i, GET)
                                                         for i in range(1, 40, 2))) + rec(SETTLE),
    "client-over-window": bytes([CLIENT]) + rec(BINARY, frame(OPEN, 0, 1, POST))
    + rec(BINARY, frame(DATA, 0, 1, b"x" * 60000)) * 5,
    "client-reset-and-reuse": bytes([CLIENT]) + rec(BINARY, frame(OPEN, 0, 1, GET))
    + rec(BINARY, frame(RESET, 0, 1, struct.pack(">I", 0))) + rec(BINARY, frame(OPEN, FIN, 1, GET)),
    "client-bad-head": bytes([CLIENT]) + rec(BINARY, frame(OPEN, FIN, 1, GET[:-3])),
    "client-text": bytes([CLIENT]) + rec(BINARY, frame(OPEN, FIN, 1, GET)) + rec(TEXT, b"{}"),
    # The server side: an answer on the stream the server opened (id 1).
    "server-response": bytes([SERVER]) + rec(SETTLE)
    + rec(BINARY, frame(HEADERS, 0, 1, response(200, [(b"content-length", b"2")]))
          + frame(DATA, FIN, 1, b"ok")) + rec(SETTLE),
    "server-trailers": bytes([SERVER]) + rec(SETTLE)
    + rec(BINARY, frame(HEADERS, 0, 1, response(200, [(b"content-type", b"application/grpc")]))
          + frame(DATA, 0, 1, b"abc") + frame(HEADERS, TRAILERS | FIN, 1,
                                              headers([(b"grpc-status", b"0")]))),
    "server-switching-protocols": bytes([SERVER]) + rec(SETTLE)
    + rec(BINARY, frame(HEADERS, 0, 1, response(101, [(b"upgrade", b"websocket")]))
          + frame(DATA, 0, 1, b"raw")),
    "server-client-opens-stream": bytes([SERVER]) + rec(BINARY, frame(OPEN, FIN, 2, GET)),
    "server-second-head": bytes([SERVER]) + rec(SETTLE)
    + rec(BINARY, frame(HEADERS, 0, 1, response(200, [])) + frame(HEADERS, 0, 1, response(200, []))),
    "server-unmasked": bytes([SERVER]) + rec(FRAME, b"\x82\x01" + frame(DATA, 0, 1, b"x")),
    # The WebSocket framing alone, beside tungstenite (client role, server role).
    "ws-client-messages": bytes([WS_CLIENT]) + rec(BINARY, b"a" * 200) + rec(PING, b"p")
    + rec(FRAME, b"\x02\x00frag") + rec(PONG) + rec(FRAME, b"\x80\x00ment") + big(70000)
    + rec(CLOSE),
    "ws-server-messages": bytes([WS_SERVER]) + rec(BINARY, b"masked") + big(MAX_MESSAGE)
    + rec(TEXT, b"\xff") + rec(BINARY, b"after"),
    "ws-server-cut": bytes([WS_SERVER]) + rec(BINARY, b"whole") + rec(RAW, b"\x82\xfe\x01"),
}

HS_OK = (b"upgrade: websocket\nconnection: Upgrade\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\n"
         b"sec-websocket-version: 13\nggrok-protocol: 2\n")
handshake = {
    "tokens-ok": b"tokens\n" + HS_OK + b"authorization: Bearer fuzz-flag-token-0123456789\n"
    b"ggrok-subdomain: MyApp\nggrok-client-id: 0123456789abcdef0123456789abcdef\n"
    b"host: tunnel.example.com:8443\n\n409\n{\"error\":\"name_taken\",\"message\":\"taken\"}",
    "tokens-missing": b"tokens\n" + HS_OK + b"\n401\n{\"error\":\"unauthorized\",\"message\":\"no\"}",
    "tokens-wrong": b"tokens\n" + HS_OK + b"authorization: Bearer guess\n\n"
    b"503\nService Unavailable",
    "open-minimal": b"open\n" + HS_OK + b"host: 127.0.0.1:8080\n\n200\n<html>not ggrok</html>",
    "open-origin": b"open\n" + HS_OK + b"origin: https://evil.example\n",
    "open-version-mismatch": b"open\nupgrade: websocket\nsec-websocket-key: a2V5\n"
    b"ggrok-protocol: 3\n\n426\n{\"error\":\"version_mismatch\",\"message\":\"v\"}",
    "open-not-websocket": b"open\nggrok-protocol: 2\n\n400\n{\"error\":\"bad_request\"}",
    "open-bad-name": b"open\n" + HS_OK + b"ggrok-subdomain: my_app\n",
    "open-long-client-id": b"open\n" + HS_OK + b"ggrok-client-id: " + b"x" * 129 + b"\n",
    "open-policy": b"open\n" + HS_OK + b"ggrok-basic-auth: alice:s3cret\n"
    b"ggrok-allow-ips: 10.0.0.0/8, 192.0.2.7, 2001:db8::/32, ::ffff:10.0.0.0/104\n",
    "open-bad-allowlist": b"open\n" + HS_OK + b"ggrok-allow-ips: 10.0.0.0/33\n"
    b"ggrok-basic-auth: :nouser\n",
    "open-forwarded": b"open\n" + HS_OK + b"x-forwarded-for: 198.51.100.1, 203.0.113.7\n"
    b"x-forwarded-proto: https\nhost: tunnel.example.com\n",
    "non-ascii-password": ("open\nupgrade: websocket\nsec-websocket-key: a2V5\nggrok-protocol: 2\n"
    "ggrok-basic-auth: alice:p\u00e4ssword\nggrok-allow-ips: ::ffff:0:0/95\n").encode(),
    "store-reserved-ours": b"store\n" + HS_OK + b"authorization: Bearer STORE_TOKEN\n"
    b"ggrok-subdomain: reserved\n",
    "store-reserved-other": b"store\n" + HS_OK + b"authorization: Bearer STORE_TOKEN\n"
    b"ggrok-subdomain: elsewhere\n\n403\n{\"error\":\"name_reserved\",\"message\":\"r\"}",
    "open-tcp-port": b"open\n" + HS_OK + b"ggrok-tcp-port: 20022\nggrok-allow-ips: 10.0.0.0/8\n"
    b"\n409\n{\"error\":\"port_taken\",\"message\":\"port 20022 is in use\"}",
    "open-tcp-any": b"open\n" + HS_OK + b"ggrok-tcp-port: 0\n\n501\n"
    b"{\"error\":\"tcp_disabled\",\"message\":\"no TCP\"}",
    "open-tcp-bad": b"open\n" + HS_OK + b"ggrok-tcp-port: 65536\n",
}

config = {
    # deploy/ggrok.env.example as a --config file.
    "deploy-example.toml": b"""domain = "tunnel.example.com"
listen = "0.0.0.0:443"
tokens = ["0123456789abcdef0123456789abcdef"]
metrics_token = "replace-with-another-random-string"
drain_timeout = 10
reconnect_grace = 10
trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]
""",
    "all-keys.toml": b"""listen = "127.0.0.1:8080"
domain = "Tunnel.Example.COM."
tokens = ["fuzz-flag-token-0123456789"]
db = "ggrok.db"
tls_cert = "cert.pem"
tls_key = "key.pem"
acme = false
acme_email = "ops@example.com"
metrics_token = "  "
reconnect_grace = 30
drain_timeout = 5
trusted_proxies = ["::1", "2001:db8::/32"]
connect_rate = 60
tunnel_rate = 0
max_tunnels_per_token = 20
tcp_ports = "20000-20999"
max_tcp_tunnels_per_token = 5
max_conns_per_tcp_tunnel = 1000
heartbeat_interval = 20
heartbeat_timeout = 45
""",
    "acme.toml": b"""domain = "tunnel.example.com"
acme = true
acme_directory = "https://acme.example/directory"
acme_email = "ops@example.com"
""",
    "problems.toml": b"""domain = "not a domain"
heartbeat_interval = 30
heartbeat_timeout = 10
tokens = ["short"]
trusted_proxies = ["10.0.0.0/33"]
tls_key = "key.pem"
""",
    "unknown-key.toml": b'domian = "tunnel.example.com"\n',
    "nets.txt": b"10.0.0.0/8\n192.0.2.7\n::1\n2001:db8::/32\n::ffff:10.0.0.0/104\n10.0.0.0/33\n"
    b" 10.1.2.3 \n10.0.0.0/8, 192.0.2.7,\n",
    "hosts.txt": b"App.Tunnel.Example.com:8080\n[::1]:80\ntunnel.example.com.\n"
    b"a.b.tunnel.example.com\nxtunnel.example.com\n.tunnel.example.com\n127.0.0.1\n",
    "names.txt": b"myapp\na-1\n-a\nb-\nMy\n" + b"a" * 63 + b"\n" + b"a" * 64 + b"\n",
    "auth.txt": b"Basic YWxpY2U6czNjcmV0\nBasic  YWxpY2U6czNjcmV0 \nBearer x\nBasic !!\n",
    "server-urls.txt": b"https://tunnel.example.com/\nws://127.0.0.1:8080\ntunnel.example.com:9000\n"
    b"ftp://x\nhttp://x/path\nHTTPS://X\n",
    "ports.txt": b"8080\n 0 \n65535\n65536\n-1\n",
    "refusal.txt": b'{"error":"too_many_tunnels","message":"cap"}\n{"error":"nope","message":""}\n',
}

# hop: the OPEN head of a stream between cluster nodes (tunnel/src/protocol.rs, decode_hop).
HOP_HTTP = 0


def hop_head(flags, ip, req):
    return bytes([HOP_HTTP, flags, len(ip)]) + ip + req


V4 = bytes([203, 0, 113, 5])
V6 = bytes.fromhex("20010db8000000000000000000000001")
HOP_HOST = [(b"host", b"app.tunnel.example.com")]
hop = {
    "get": hop_head(1, V4, request(b"GET", b"/hello?x=1", HOP_HOST)),
    "post-v6-proxied": hop_head(2, V6, request(b"POST", b"/api", HOP_HOST
                                               + [(b"x-forwarded-for", b"198.51.100.1")])),
    "upgrade": hop_head(3, V4, UPGRADE),
    "apex": hop_head(0, V4, request(b"GET", b"/", [(b"host", b"tunnel.example.com")])),
    "bad-name": hop_head(0, V4, request(b"GET", b"/", [(b"host", b"-x.tunnel.example.com")])),
    "no-host": hop_head(0, V4, request(b"GET", b"/", [])),
    "gzip-chunked": hop_head(0, V4, request(b"POST", b"/", HOP_HOST
                                            + [(b"transfer-encoding", b"gzip, chunked")])),
    # Plain for the holder's own path (cluster/plain.rs): the tunnel's credentials, a chain of
    # the visitor's own, JSON pages, hop-by-hop headers to drop; then one that names a header.
    "plain-auth-forwarded": hop_head(0, V4, request(b"GET", b"/p?q=1", HOP_HOST + [
        (b"authorization", b"Basic YWxpY2U6czNjcmV0"), (b"accept", b"application/json"),
        (b"x-forwarded-for", b"198.51.100.1"), (b"X-Forwarded-For", b" 10.0.0.1 "),
        (b"connection", b"keep-alive"), (b"keep-alive", b"5"), (b"x-forwarded-proto", b"https")])),
    "plain-v6-port": hop_head(1, V6, request(b"DELETE", b"/x", [
        (b"Host", b"app.tunnel.example.com.:8443"), (b"content-length", b"0")])),
    "connection-names-header": hop_head(0, V4, request(b"GET", b"/", HOP_HOST + [
        (b"connection", b"x-a, close"), (b"x-a", b"1")])),
    "tcp-inside": hop_head(0, V4, b"\x02" + struct.pack(">H", 9) + b"1.2.3.4:5"),
    "bad-flags": hop_head(8, V4, GET),
    "bad-ip-len": bytes([HOP_HTTP, 0, 5]) + V4 + b"\x00" + GET,
    "text-http": b"203.0.113.5 1 0",
    "text-tcp": b"2001:db8::1 0 1 2222",
    "text-bad": b"203.0.113.5 1 0 0",
}


# local_answer: a local service's answer as the client reads it (tunnel/src/h1.rs): [mode][bytes],
# mode bit 0 = an answer to HEAD, bits 1-4 = bytes per read - 1.
def answer(mode, text):
    return bytes([mode]) + text


local_answer = {
    "length": answer(0, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"),
    "chunked-trailers": answer(2, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                               b"5;a=b\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 9\r\n\r\n"),
    "continue-then-close": answer(30, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                                  b"connection: x-hop, close\r\nx-hop: 1\r\ncontent-length: 3\r\n\r\nabc"),
    "http10-to-close": answer(4, b"HTTP/1.0 404 Not Found\r\nServer: old\r\n\r\nuntil the close"),
    "head-with-length": answer(1, b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
    "both-framings": answer(6, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
                            b"3\r\nabc\r\n0\r\n\r\n"),
    "obs-text-and-204": answer(0, b"\r\nHTTP/1.1 204 No Content\r\nX-Name: caf\xe9\r\nSet-Cookie: a=1\r\n"
                               b"Set-Cookie: b=2\r\n\r\n"),
}


# visitor_head: the bytes a visitor's connection sends, as the server's own HTTP/1.1 reads them
# (server/src/h1.rs) beside hyper; DOMAIN is tunnel.example.com.
def req(line, *headers, body=b""):
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


H = b"Host: app.tunnel.example.com"
visitor_head = {
    "get": req(b"GET /a/b?c=1 HTTP/1.1", H, b"Accept: */*"),
    "post-body": req(b"POST /api HTTP/1.1", H, b"Content-Length: 5", b"Content-Type: text/plain", body=b"hello"),
    "pipelined": req(b"GET / HTTP/1.1", H) + req(b"HEAD /x HTTP/1.1", H, b"Connection: close"),
    "hop-and-forwarded": req(b"GET / HTTP/1.1", b"HOST: app.tunnel.example.com:8443", b"Keep-Alive: 5",
                             b"Connection: keep-alive", b"X-Forwarded-For: 203.0.113.9, 10.0.0.1",
                             b"X-Forwarded-Proto: https", b"Proxy-Authorization: x"),
    "two-lengths": req(b"POST / HTTP/1.1", H, b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"),
    "chunked": req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n"),
    "odd-target": req(b"GET /caf\xc3\xa9?q=%zz#f HTTP/1.1", H),
    "http10": req(b"GET / HTTP/1.0", H),
}


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("frames", frames)
write("handshake", handshake)
write("config", config)
write("hop", hop)
write("local_answer", local_answer)
write("visitor_head", visitor_head)
