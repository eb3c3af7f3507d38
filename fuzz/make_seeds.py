#!/usr/bin/env python3
"""Writes the seed inputs of the three fuzz targets into fuzz/corpus/<target>/seed-*.

Run from anywhere: python3 fuzz/make_seeds.py. Deterministic: the
JWTs use fixed timestamps (exp in 2100) and the secret the `startup` target verifies with.
"""

import base64
import hashlib
import hmac
import json
import re
import struct
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
SECRET = b"pgtenant-fuzz-secret-0123456789abcdef"
ISSUER = "https://issuer.example"
AUDIENCE = "pgtenant"
TENANT = "7b1f0c1e-8a52-4b43-9d1f-3c5a8d2e9f10"
EXP_2100 = 4102444800


def write(target, name, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# --- wire helpers -------------------------------------------------------------------------


def startup_packet(params, minor=0, extra=b""):
    body = struct.pack(">I", (3 << 16) | minor)
    for k, v in params:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0" + extra
    return struct.pack(">I", len(body) + 4) + body


def untagged(code, payload=b""):
    return struct.pack(">II", 8 + len(payload), code) + payload


SSL = untagged(80877103)
GSS = untagged(80877104)
CANCEL = untagged(80877102, struct.pack(">ii", 4242, -7))


def msg(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(header, claims, secret=SECRET, digest=hashlib.sha256):
    signing = b64(json.dumps(header, separators=(",", ":")).encode()) + "." + b64(
        json.dumps(claims, separators=(",", ":")).encode()
    )
    sig = hmac.new(secret, signing.encode(), digest).digest()
    return signing + "." + b64(sig)


STRICT_CLAIMS = {"tenant_id": TENANT, "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": 1700000000, "exp": EXP_2100}
LOOSE_CLAIMS = {"org": {"tenant": "acme:eu-1"}, "sub": "bob", "exp": EXP_2100}

TOKENS = {
    "strict-valid": jwt({"alg": "HS256", "typ": "JWT"}, STRICT_CLAIMS),
    "strict-aud-list": jwt({"alg": "HS256"}, dict(STRICT_CLAIMS, aud=["other", AUDIENCE])),
    "strict-upper-tenant": jwt({"alg": "HS256"}, dict(STRICT_CLAIMS, tenant_id=TENANT.upper())),
    "loose-valid-hs384": jwt({"alg": "HS384"}, LOOSE_CLAIMS, digest=hashlib.sha384),
    "loose-valid-hs512": jwt({"alg": "HS512"}, LOOSE_CLAIMS, digest=hashlib.sha512),
    "expired": jwt({"alg": "HS256"}, dict(STRICT_CLAIMS, exp=1000000000)),
    "nbf-future": jwt({"alg": "HS256"}, dict(STRICT_CLAIMS, nbf=EXP_2100 - 10)),
    "float-exp": jwt({"alg": "HS256"}, dict(STRICT_CLAIMS, exp=4102444800.5)),
    "wrong-secret": jwt({"alg": "HS256"}, STRICT_CLAIMS, secret=b"x" * 40),
    "alg-none": b64(b'{"alg":"none"}') + "." + b64(json.dumps(STRICT_CLAIMS).encode()) + ".",
    "alg-rs256": b64(b'{"alg":"RS256"}') + "." + b64(json.dumps(STRICT_CLAIMS).encode()) + ".AAAA",
    "crit": jwt({"alg": "HS256", "crit": ["exp"]}, STRICT_CLAIMS),
    "tenant-number": jwt({"alg": "HS256"}, dict(STRICT_CLAIMS, tenant_id=5)),
    "tenant-injection": jwt({"alg": "HS256"}, dict(LOOSE_CLAIMS, org={"tenant": "x'; drop table t; --"})),
    "no-exp": jwt({"alg": "HS256"}, {k: v for k, v in STRICT_CLAIMS.items() if k != "exp"}),
    "dotted-claim-name": jwt({"alg": "HS256"}, {"org.tenant": "dotted", "exp": EXP_2100}),
}

# --- framer: ctl byte (limit | startup-first << 3 | cuts << 4), cuts, stream ---------------

login = (
    SSL
    + startup_packet([("user", "alice"), ("database", "app"), ("application_name", "psql"), ("client_encoding", "UTF8")])
    + msg(b"p", TOKENS["strict-valid"].encode() + b"\0")
    + msg(b"Q", b"select 1; SET app.current_tenant_id = 'x'\0")
    + msg(b"X", b"")
)
extended = (
    msg(b"P", b"s1\0select $1::int\0\0\x01\0\0\0\x17")
    + msg(b"B", b"\0s1\0\0\x01\0\0\0\x01\0\0\0\x0142\0\0")
    + msg(b"D", b"P\0")
    + msg(b"E", b"\0\0\0\0\0")
    + msg(b"S", b"")
)
server = (
    msg(b"R", b"\0\0\0\0")
    + msg(b"S", b"client_encoding\0UTF8\0")
    + msg(b"K", struct.pack(">ii", 1, 2))
    + msg(b"T", b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0")
    + msg(b"D", b"\0\x02\0\0\0\x01a\xff\xff\xff\xff")
    + msg(b"E", b"SERROR\0VERROR\0C42601\0Msyntax error at or near \"x\"\0P42\0\0")
    + msg(b"N", b"SNOTICE\0C00000\0Mhello\0\0")
    + msg(b"C", b"SELECT 1\0")
    + msg(b"Z", b"I")
)
write("framer", "login-whole", bytes([0x08 | 7]) + login)
write("framer", "login-cut", bytes([0x08 | 7 | (3 << 4)]) + struct.pack(">HHH", 3, 9, 40) + login)
write("framer", "extended", bytes([5]) + extended)
write("framer", "server-cut", bytes([6 | (4 << 4)]) + struct.pack(">HHHH", 1, 5, 6, 100) + server)
write("framer", "cancel", bytes([0x08 | 7]) + CANCEL)
write("framer", "gss-then-startup", bytes([0x08 | 4]) + GSS + startup_packet([("user", "u")], minor=2, extra=b""))
write("framer", "too-large", bytes([2]) + msg(b"Q", b"x" * 100))
write("framer", "bad-length", bytes([7]) + b"Q\0\0\0\x03")
write("framer", "huge-length", bytes([7]) + b"Q\xff\xff\xff\xff" + b"x" * 8)
write("framer", "startup-bad-length", bytes([0x08 | 7]) + b"\0\0\x27\x11" + b"\0" * 8)

# --- startup: mode byte (0 packet, 1 password body, 2 token/tenant text, 3 structured) ------

write("startup", "packet-basic", b"\0" + startup_packet([("user", "alice"), ("database", "app")]))
write(
    "startup",
    "packet-options",
    b"\0"
    + startup_packet(
        [
            ("user", "alice"),
            ("options", "-c search_path=a,b --work-mem=4MB -c x\\ y=z"),
            ("DateStyle", "ISO, MDY"),
            ("replication", "false"),
        ]
    ),
)
write("startup", "packet-pq-options", b"\0" + startup_packet([("user", "a"), ("_pq_.compression", "on")], minor=2))
write("startup", "packet-tenant-option", b"\0" + startup_packet([("user", "a"), ("options", "-c app.current_tenant_id=x")]))
write("startup", "packet-encoding", b"\0" + startup_packet([("user", "a"), ("client_encoding", "SJIS")]))
write("startup", "packet-ssl", b"\0" + SSL)
write("startup", "packet-gss", b"\0" + GSS)
write("startup", "packet-cancel", b"\0" + CANCEL)
write("startup", "packet-v2", b"\0" + struct.pack(">II", 9, 2 << 16) + b"\0")
write("startup", "packet-junk-after", b"\0" + startup_packet([("user", "a")], extra=b"junk"))
for name, token in TOKENS.items():
    write("startup", f"token-{name}", b"\2" + token.encode())
write("startup", "password-valid", b"\1" + TOKENS["strict-valid"].encode() + b"\0")
write("startup", "password-loose", b"\1" + TOKENS["loose-valid-hs384"].encode() + b"\0")
write("startup", "password-trailing", b"\1" + TOKENS["strict-valid"].encode() + b"\n\0")
write("startup", "password-no-nul", b"\1secret")
write("startup", "tenant-uuid", b"\2" + TENANT.encode())
write("startup", "tenant-text", b"\2acme_corp.eu-1:team@x")
write("startup", "tenant-braced", b"\2{" + TENANT.encode() + b"}")
for i, raw in enumerate([b"\0" * 64, bytes(range(256)), b"\x01" * 200, b"HS256" * 20]):
    write("startup", f"structured-{i}", b"\3" + raw)

# --- inspector: every SQL string of the lexer and inspector unit tests, plus extras ---------


def rust_strings(path):
    """String literals of the file's test module ("...", b"...", r#"..."#; escapes decoded)."""
    text = path.read_text()
    text = text[text.index("#[cfg(test)]") :]
    escapes = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if text.startswith("//", i):
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl + 1
        elif (m := re.match(r"b?r(#*)\"", text[i:])) and (i == 0 or not text[i - 1].isalnum()):
            end = text.index('"' + m.group(1), i + m.end())
            out.append(text[i + m.end() : end])
            i = end + 1 + len(m.group(1))
        elif m := re.match(r"b?'(\\.[^']*|[^\\'])'", text[i:]):
            i += m.end()
        elif c == '"' or text.startswith('b"', i):
            j = i + (2 if c == "b" else 1)
            buf = []
            while text[j] != '"':
                if text[j] == "\\":
                    e = text[j + 1]
                    if e == "\n":
                        j += 2
                        while text[j] in " \t\n":
                            j += 1
                        continue
                    if e == "u":
                        close = text.index("}", j)
                        buf.append(chr(int(text[j + 3 : close], 16)))
                        j = close + 1
                        continue
                    if e == "x":
                        buf.append(chr(int(text[j + 2 : j + 4], 16)))
                        j += 4
                        continue
                    buf.append(escapes.get(e, e))
                    j += 2
                else:
                    buf.append(text[j])
                    j += 1
            out.append("".join(buf))
            i = j + 1
        else:
            i += 1
    return out


sql = set()
for f in ["src/sql/inspect.rs", "src/sql/lexer.rs"]:
    for s in rust_strings(ROOT / f):
        if len(s) >= 3:
            sql.add(s)
sql.update(
    [
        "SELECT $$a$$, $tag$ b $$ c $tag$, $1, $ab$$ab$",
        "SELECT E'it\\'s', E'\\x41\\101\\u0041', e'a''b', 'a'\n'b', E'x'\n  'y\\'",
        "SELECT U&'d\\0061t\\+000061' UESCAPE '!', U&\"d!0061t\" UESCAPE '!'",
        "SELECT B'1010', X'ff', N'national', 0x1F, 0o17, 0b101, 1_000.5e-3, .5",
        "SELECT 1 /* outer /* inner */ still comment */ + 2 -- trailing",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END; SELECT 2",
        "CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END",
        "BEGIN; SET LOCAL statement_timeout = 5; COMMIT AND CHAIN; ROLLBACK; END",
        "PREPARE s AS SELECT 1; EXECUTE s; DEALLOCATE ALL; DISCARD ALL; LISTEN c; UNLISTEN *",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1; CREATE TEMP TABLE t (a int); SELECT pg_advisory_lock(1)",
        "VACUUM; CREATE INDEX CONCURRENTLY i ON t (a); REINDEX DATABASE d; CLUSTER",
        "SELECT 'a\\' ; SET app.current_tenant_id = 'x'",
        "SELECT +-+-1, a<=>b, a||b, a::int, a := 1, a..b, @-1, !~*x",
        "SELECT 'x' -- comment with ' quote\n; SET \"app\".\"current_tenant_id\" = 'y'",
        "select set_config('app.current_tenant_id', '2', false) from (select 1) s(a)",
        "SET app.current_tenant_id\r= 'x'\x0c",
    ]
)
for i, s in enumerate(sorted(sql)):
    write("inspector", f"{i:03}", s.encode())
