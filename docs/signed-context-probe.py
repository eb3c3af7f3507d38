import socket, struct
def msg(t, body): return t + struct.pack('!I', len(body)+4) + body
def cstr(s): return s.encode()+b'\0'
# Probe for docs/signed-context.md: extended Bind/Execute without Sync, then a
# simple Query, against a PostgreSQL on 127.0.0.1:55432 (bench/profile-setup.sh).
s = socket.create_connection(('127.0.0.1', 55432))
body = struct.pack('!I', 196608) + cstr('user') + cstr('postgres') + cstr('database') + cstr('app') + b'\0'
s.sendall(struct.pack('!I', len(body)+4) + body)
def read_until_z():
    out=[]; buf=b''
    while True:
        while len(buf) < 5: buf += s.recv(65536)
        t=buf[0:1]; n=struct.unpack('!I', buf[1:5])[0]
        while len(buf) < n+1: buf += s.recv(65536)
        out.append((t, buf[5:n+1])); buf=buf[n+1:]
        if t==b'Z': return out
read_until_z()
q = "SELECT pg_catalog.set_config('app.x', $1, true), pg_catalog.set_config('app.y', $2, true)"
parse = msg(b'P', cstr('s1') + cstr(q) + struct.pack('!h', 0))
bind = msg(b'B', cstr('') + cstr('s1') + struct.pack('!h',0) + struct.pack('!h',2) + struct.pack('!i',3)+b'abc' + struct.pack('!i',3)+b'xyz' + struct.pack('!h',0))
exe = msg(b'E', cstr('') + struct.pack('!i', 0))
query = msg(b'Q', cstr("SELECT current_setting('app.x', true), current_setting('app.y', true); SELECT current_setting('app.x', true)"))
s.sendall(parse + bind + exe + query)
for t, b in read_until_z(): print(t, b[:80])
# next query: setting should be gone (transaction ended)
s.sendall(msg(b'Q', cstr("SELECT current_setting('app.x', true)")))
for t, b in read_until_z(): print(t, b[:80])
# BEGIN ISOLATION LEVEL after the injection: does set_config's snapshot break it?
s.sendall(bind + exe + msg(b'Q', cstr("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT current_setting('app.x', true); COMMIT")))
for t, b in read_until_z(): print(t, b[:80])
