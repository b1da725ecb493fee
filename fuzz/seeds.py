#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/ (run from anywhere; deterministic).

Seeds are small, hand-made and meaningful: each is a valid case or one edge case, so the
fuzzer starts from inputs that reach deep code. The input formats are documented in
tunnel/src/fuzzing.rs (frames) and server/src/fuzzing.rs (handshake, config).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# frames: mode byte, then records [tag u8][len u16 LE][payload].
WS_IO, CLIENT, SERVER = 0, 1, 2
BINARY, TEXT, PING, PONG, CLOSE, FRAME, RAW, BIG, SETTLE = range(9)
MAX_MESSAGE = 1024 * 1024


def rec(tag, payload=b""):
    return struct.pack("<BH", tag, len(payload)) + payload


def big(n):
    return rec(BIG, struct.pack("<I", n))


# yamux (hashicorp spec): version, type, flags, stream id, length, all big-endian.
DATA, WINDOW_UPDATE, YPING, GO_AWAY = range(4)
SYN, ACK, FIN, RST = 1, 2, 4, 8


def yamux(typ, flags, stream, length, data=b""):
    return struct.pack(">BBHII", 0, typ, flags, stream, length) + data


def ydata(stream, data, flags=0):
    return yamux(DATA, flags, stream, len(data), data)


GET = (b"GET /hello?x=1 HTTP/1.1\r\nhost: app.tunnel.example.com\r\n"
       b"x-forwarded-for: 203.0.113.5\r\nx-forwarded-proto: https\r\n\r\n")
POST = (b"POST /api HTTP/1.1\r\nhost: app.tunnel.example.com\r\n"
        b"connection: keep-alive, x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\n"
        b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
UPGRADE = (b"GET /ws HTTP/1.1\r\nhost: app.tunnel.example.com\r\nconnection: Upgrade\r\n"
           b"upgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"sec-websocket-version: 13\r\n\r\n")

frames = {
    # WsIo against its model.
    "ws-binaries": bytes([WS_IO]) + rec(BINARY, b"hello") + rec(PING, b"p") + rec(BINARY, b"")
    + rec(BINARY, b" world") + rec(PONG),
    "ws-close": bytes([WS_IO]) + rec(BINARY, b"abc") + rec(CLOSE) + rec(BINARY, b"after"),
    "ws-text": bytes([WS_IO]) + rec(BINARY, b"x") + rec(TEXT, b"hi"),
    "ws-largest-message": bytes([WS_IO]) + big(MAX_MESSAGE) + rec(BINARY, b"!"),
    "ws-oversized-message": bytes([WS_IO]) + rec(BINARY, b"a") + big(MAX_MESSAGE + 1),
    "ws-fragmented": bytes([WS_IO]) + rec(FRAME, b"\x02\x00ab") + rec(PING)
    + rec(FRAME, b"\x80\x00cd"),
    "ws-masked-by-server": bytes([WS_IO]) + rec(FRAME, b"\x82\x01masked"),
    "ws-reserved-bits": bytes([WS_IO]) + rec(FRAME, b"\xf2\x00rsv"),
    "ws-raw-truncated-header": bytes([WS_IO]) + rec(BINARY, b"ok") + rec(RAW, b"\x82\x7f\xff"),
    # The client side: yamux streams carrying HTTP to the forwarder.
    "client-get": bytes([CLIENT]) + rec(BINARY, yamux(WINDOW_UPDATE, SYN, 1, 0) + ydata(1, GET))
    + rec(SETTLE) + rec(BINARY, ydata(1, b"", FIN)) + rec(SETTLE),
    "client-post-hop-by-hop": bytes([CLIENT]) + rec(BINARY, ydata(1, POST, SYN)) + rec(SETTLE),
    "client-upgrade": bytes([CLIENT]) + rec(BINARY, ydata(1, UPGRADE, SYN)) + rec(SETTLE)
    + rec(BINARY, ydata(1, b"\x81\x02hi")),
    # Message boundaries mean nothing: one yamux frame split over three messages.
    "client-split-frames": bytes([CLIENT]) + rec(BINARY, ydata(3, GET, SYN)[:5])
    + rec(BINARY, ydata(3, GET, SYN)[5:20]) + rec(BINARY, ydata(3, GET, SYN)[20:]) + rec(SETTLE),
    "client-ping-goaway": bytes([CLIENT]) + rec(BINARY, yamux(YPING, SYN, 0, 7))
    + rec(BINARY, yamux(GO_AWAY, 0, 0, 0)),
    "client-bad-version": bytes([CLIENT]) + rec(BINARY, b"\x01" + yamux(DATA, SYN, 1, 0)[1:]),
    "client-over-window": bytes([CLIENT]) + rec(BINARY, yamux(DATA, SYN, 1, 300000))
    + big(300000),
    "client-rst-and-reuse": bytes([CLIENT]) + rec(BINARY, ydata(1, GET[:10], SYN))
    + rec(BINARY, yamux(WINDOW_UPDATE, RST, 1, 0)) + rec(BINARY, ydata(1, GET, SYN)),
    "client-text": bytes([CLIENT]) + rec(BINARY, ydata(1, GET, SYN)) + rec(TEXT, b"{}"),
    # The server side: a response on the stream the server opened (id 1).
    "server-response": bytes([SERVER]) + rec(SETTLE)
    + rec(BINARY, yamux(WINDOW_UPDATE, ACK, 1, 0)
          + ydata(1, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")) + rec(SETTLE),
    "server-chunked-response": bytes([SERVER]) + rec(SETTLE)
    + rec(BINARY, ydata(1, b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n0\r\n\r\n", ACK)) + rec(SETTLE),
    "server-switching-protocols": bytes([SERVER]) + rec(SETTLE)
    + rec(BINARY, ydata(1, b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                       b"connection: upgrade\r\n\r\nraw", ACK)),
    "server-client-opens-stream": bytes([SERVER]) + rec(BINARY, ydata(2, GET, SYN))
    + rec(BINARY, yamux(GO_AWAY, 0, 0, 1)),
    "server-unmasked": bytes([SERVER]) + rec(FRAME, b"\x82\x01" + ydata(1, b"x", ACK)),
}

HS_OK = (b"upgrade: websocket\nconnection: Upgrade\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\n"
         b"sec-websocket-version: 13\nggrok-protocol: 1\n")
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
    b"ggrok-protocol: 2\n\n426\n{\"error\":\"version_mismatch\",\"message\":\"v\"}",
    "open-not-websocket": b"open\nggrok-protocol: 1\n\n400\n{\"error\":\"bad_request\"}",
    "open-bad-name": b"open\n" + HS_OK + b"ggrok-subdomain: my_app\n",
    "open-long-client-id": b"open\n" + HS_OK + b"ggrok-client-id: " + b"x" * 129 + b"\n",
    "open-policy": b"open\n" + HS_OK + b"ggrok-basic-auth: alice:s3cret\n"
    b"ggrok-allow-ips: 10.0.0.0/8, 192.0.2.7, 2001:db8::/32, ::ffff:10.0.0.0/104\n",
    "open-bad-allowlist": b"open\n" + HS_OK + b"ggrok-allow-ips: 10.0.0.0/33\n"
    b"ggrok-basic-auth: :nouser\n",
    "open-forwarded": b"open\n" + HS_OK + b"x-forwarded-for: 198.51.100.1, 203.0.113.7\n"
    b"x-forwarded-proto: https\nhost: tunnel.example.com\n",
    "non-ascii-password": ("open\nupgrade: websocket\nsec-websocket-key: a2V5\nggrok-protocol: 1\n"
    "ggrok-basic-auth: alice:p\u00e4ssword\nggrok-allow-ips: ::ffff:0:0/95\n").encode(),
    "store-reserved-ours": b"store\n" + HS_OK + b"authorization: Bearer STORE_TOKEN\n"
    b"ggrok-subdomain: reserved\n",
    "store-reserved-other": b"store\n" + HS_OK + b"authorization: Bearer STORE_TOKEN\n"
    b"ggrok-subdomain: elsewhere\n\n403\n{\"error\":\"name_reserved\",\"message\":\"r\"}",
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


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("frames", frames)
write("handshake", handshake)
write("config", config)
