//! A byte-level PostgreSQL protocol 3.0 client, for tests that assert exact message sequences.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a read waits for a message before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest backend message accepted; anything bigger is a framing bug.
const MAX_MESSAGE_LEN: usize = 64 << 20;

const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// One backend message: its tag byte and its body (without the length).
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The type byte, e.g. `b'Z'`.
    pub tag: u8,
    /// The body after the 4-byte length.
    pub body: Bytes,
}

/// The fields of an ErrorResponse received during login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFields(pub HashMap<char, String>);

impl ErrorFields {
    /// SQLSTATE (field `C`), or `""`.
    pub fn code(&self) -> &str {
        self.get('C')
    }

    /// Primary message (field `M`), or `""`.
    pub fn message(&self) -> &str {
        self.get('M')
    }

    /// Non-localized severity (field `V`, else `S`), or `""`.
    pub fn severity(&self) -> &str {
        match self.0.get(&'V') {
            Some(v) => v,
            None => self.get('S'),
        }
    }

    /// Any field by its code letter, or `""`.
    pub fn get(&self, field: char) -> &str {
        self.0.get(&field).map_or("", String::as_str)
    }
}

/// What a successful login reported.
#[derive(Clone, Debug, Default)]
pub struct LoginInfo {
    /// ParameterStatus messages, name → value.
    pub params: HashMap<String, String>,
    /// BackendKeyData: (process id, secret key); (0, 0) if none was sent.
    pub backend_key: (i32, i32),
}

/// A raw protocol connection. Builders append to a write buffer; [`RawClient::flush`] sends it.
pub struct RawClient {
    stream: TcpStream,
    out: BytesMut,
    inbuf: BytesMut,
}

impl RawClient {
    /// Opens a TCP connection to 127.0.0.1:`port`.
    pub async fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("RawClient: connect to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).expect("set_nodelay");
        RawClient { stream, out: BytesMut::new(), inbuf: BytesMut::new() }
    }

    /// Sends a protocol 3.0 StartupMessage with `params` (e.g. `user`, `database`).
    pub async fn startup(&mut self, params: &[(&str, &str)]) {
        let mut body = BytesMut::new();
        body.put_i32(PROTOCOL_3_0);
        for (name, value) in params {
            put_cstr(&mut body, name);
            put_cstr(&mut body, value);
        }
        body.put_u8(0);
        self.send_untagged(&body).await;
    }

    /// Sends an SSLRequest and returns the one-byte answer (`b'S'` or `b'N'`).
    pub async fn ssl_request(&mut self) -> u8 {
        self.send_untagged(&SSL_REQUEST_CODE.to_be_bytes()).await;
        self.read_byte().await
    }

    /// Sends a GSSENCRequest and returns the one-byte answer (`b'G'` or `b'N'`).
    pub async fn gssenc_request(&mut self) -> u8 {
        self.send_untagged(&GSSENC_REQUEST_CODE.to_be_bytes()).await;
        self.read_byte().await
    }

    /// Sends a PasswordMessage (`p`) and flushes.
    pub async fn send_password(&mut self, password: &str) {
        let mut body = BytesMut::new();
        put_cstr(&mut body, password);
        self.raw(b'p', &body);
        self.flush().await;
    }

    /// Logs in as `user` to `database`, answering a cleartext password request with
    /// `password`; reads up to ReadyForQuery. An ErrorResponse gives `Err`.
    pub async fn login(&mut self, user: &str, database: &str, password: &str) -> Result<LoginInfo, ErrorFields> {
        self.login_with(&[("user", user), ("database", database)], password).await
    }

    /// Like [`RawClient::login`] with arbitrary startup parameters.
    pub async fn login_with(&mut self, params: &[(&str, &str)], password: &str) -> Result<LoginInfo, ErrorFields> {
        self.startup(params).await;
        let mut info = LoginInfo::default();
        loop {
            let msg = self.read_message().await;
            match msg.tag {
                b'R' => self.answer_auth(&msg, password).await,
                b'S' => {
                    let (name, value) = msg.parameter_status();
                    info.params.insert(name, value);
                }
                b'K' => info.backend_key = msg.backend_key(),
                b'E' => return Err(ErrorFields(msg.error_fields())),
                b'Z' => return Ok(info),
                _ => {} // NoticeResponse, NegotiateProtocolVersion: not needed here.
            }
        }
    }

    async fn answer_auth(&mut self, msg: &Message, password: &str) {
        match msg.auth_code() {
            0 => {}
            3 => self.send_password(password).await,
            code => panic!(
                "RawClient: authentication method {code} is not supported \
                 (only trust and cleartext password)"
            ),
        }
    }

    /// Appends a simple Query (`Q`).
    pub fn query(&mut self, sql: &str) -> &mut Self {
        let mut body = BytesMut::new();
        put_cstr(&mut body, sql);
        self.raw(b'Q', &body)
    }

    /// Appends a Parse (`P`) of `sql` as statement `name` with the given parameter type OIDs.
    pub fn parse(&mut self, name: &str, sql: &str, param_oids: &[u32]) -> &mut Self {
        let mut body = BytesMut::new();
        put_cstr(&mut body, name);
        put_cstr(&mut body, sql);
        body.put_i16(len_i16(param_oids.len()));
        for oid in param_oids {
            body.put_u32(*oid);
        }
        self.raw(b'P', &body)
    }

    /// Appends a Bind (`B`) of `stmt` to `portal`; parameters and results in text format.
    pub fn bind(&mut self, portal: &str, stmt: &str, params: &[Option<&[u8]>]) -> &mut Self {
        let mut body = BytesMut::new();
        put_cstr(&mut body, portal);
        put_cstr(&mut body, stmt);
        body.put_i16(0); // no parameter format codes: all text
        put_values(&mut body, params);
        body.put_i16(0); // no result format codes: all text
        self.raw(b'B', &body)
    }

    /// Appends a Describe (`D`) of prepared statement `name`.
    pub fn describe_statement(&mut self, name: &str) -> &mut Self {
        self.named(b'D', b'S', name)
    }

    /// Appends a Describe (`D`) of portal `name`.
    pub fn describe_portal(&mut self, name: &str) -> &mut Self {
        self.named(b'D', b'P', name)
    }

    /// Appends an Execute (`E`) of `portal`, `max_rows` 0 meaning all.
    pub fn execute(&mut self, portal: &str, max_rows: i32) -> &mut Self {
        let mut body = BytesMut::new();
        put_cstr(&mut body, portal);
        body.put_i32(max_rows);
        self.raw(b'E', &body)
    }

    /// Appends a Sync (`S`).
    pub fn sync(&mut self) -> &mut Self {
        self.raw(b'S', &[])
    }

    /// Appends a Flush (`H`) message (not to be confused with [`RawClient::flush`]).
    pub fn flush_msg(&mut self) -> &mut Self {
        self.raw(b'H', &[])
    }

    /// Appends a Close (`C`) of prepared statement `name`.
    pub fn close_statement(&mut self, name: &str) -> &mut Self {
        self.named(b'C', b'S', name)
    }

    /// Appends a Close (`C`) of portal `name`.
    pub fn close_portal(&mut self, name: &str) -> &mut Self {
        self.named(b'C', b'P', name)
    }

    /// Appends a Terminate (`X`).
    pub fn terminate(&mut self) -> &mut Self {
        self.raw(b'X', &[])
    }

    /// Appends a fastpath FunctionCall (`F`) of function `oid`; arguments and result in text.
    pub fn function_call(&mut self, oid: u32, args: &[Option<&[u8]>]) -> &mut Self {
        let mut body = BytesMut::new();
        body.put_u32(oid);
        body.put_i16(0); // no argument format codes: all text
        put_values(&mut body, args);
        body.put_i16(0); // result format: text
        self.raw(b'F', &body)
    }

    /// Appends a message with any `tag` and `body`; the length is computed.
    pub fn raw(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.out.put_u8(tag);
        self.out.put_i32(len_i32(body.len() + 4));
        self.out.put_slice(body);
        self
    }

    /// Appends bytes verbatim (for malformed-frame tests).
    pub fn raw_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.put_slice(bytes);
        self
    }

    /// Sends everything appended so far.
    pub async fn flush(&mut self) {
        let out = self.out.split();
        self.stream.write_all(&out).await.unwrap_or_else(|e| panic!("RawClient: write failed: {e}"));
    }

    /// Sends `sql` as a simple Query and returns the replies up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<Message> {
        self.query(sql);
        self.flush().await;
        self.read_until_ready().await
    }

    /// Reads one message; panics on timeout ([`READ_TIMEOUT`]), EOF or a read error.
    pub async fn read_message(&mut self) -> Message {
        match self.try_read_message(READ_TIMEOUT).await {
            Ok(Some(msg)) => msg,
            Ok(None) => panic!("RawClient: the server closed the connection"),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                panic!("RawClient: no complete message within {READ_TIMEOUT:?} ({} bytes buffered)", self.inbuf.len())
            }
            Err(e) => panic!("RawClient: read failed: {e}"),
        }
    }

    /// Reads one message: `Ok(None)` on a clean EOF, `Err(TimedOut)` after `timeout`.
    pub async fn try_read_message(&mut self, timeout: Duration) -> io::Result<Option<Message>> {
        match tokio::time::timeout(timeout, self.read_frame()).await {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Reads messages up to and including the next ReadyForQuery (`Z`).
    pub async fn read_until_ready(&mut self) -> Vec<Message> {
        let mut messages = Vec::new();
        loop {
            let msg = self.read_message().await;
            let done = msg.tag == b'Z';
            messages.push(msg);
            if done {
                return messages;
            }
        }
    }

    /// Reads until the server closes the connection, returning what arrived before;
    /// panics if it stays open for [`READ_TIMEOUT`]. A reset counts as closed.
    pub async fn expect_closed(&mut self) -> Vec<Message> {
        let mut messages = Vec::new();
        loop {
            match self.try_read_message(READ_TIMEOUT).await {
                Ok(Some(msg)) => messages.push(msg),
                Ok(None) => return messages,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    panic!("RawClient: connection still open after {READ_TIMEOUT:?}; got {:?}", summarize(&messages))
                }
                Err(_) => return messages,
            }
        }
    }

    /// The underlying stream, for tests that need it (e.g. half-close).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    async fn read_frame(&mut self) -> io::Result<Option<Message>> {
        loop {
            if let Some(msg) = self.parse_frame()? {
                return Ok(Some(msg));
            }
            if self.stream.read_buf(&mut self.inbuf).await? == 0 {
                return if self.inbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("EOF inside a message ({} bytes buffered)", self.inbuf.len()),
                    ))
                };
            }
        }
    }

    /// A whole message from the buffer, if one is there.
    fn parse_frame(&mut self) -> io::Result<Option<Message>> {
        if self.inbuf.len() < 5 {
            return Ok(None);
        }
        let tag = self.inbuf[0];
        let len = i32::from_be_bytes(self.inbuf[1..5].try_into().unwrap());
        let len = usize::try_from(len).unwrap_or(0);
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad length {len} for message {:?}", tag as char),
            ));
        }
        if self.inbuf.len() < 1 + len {
            return Ok(None);
        }
        let mut frame = self.inbuf.split_to(1 + len).freeze();
        frame.advance(5);
        Ok(Some(Message { tag, body: frame }))
    }

    async fn read_byte(&mut self) -> u8 {
        if !self.inbuf.is_empty() {
            return self.inbuf.split_to(1)[0];
        }
        match tokio::time::timeout(READ_TIMEOUT, self.stream.read_u8()).await {
            Ok(Ok(byte)) => byte,
            Ok(Err(e)) => panic!("RawClient: reading a one-byte answer failed: {e}"),
            Err(_) => panic!("RawClient: no one-byte answer within {READ_TIMEOUT:?}"),
        }
    }

    /// Sends a length-prefixed message without a tag (startup-phase packets).
    async fn send_untagged(&mut self, body: &[u8]) {
        self.out.put_i32(len_i32(body.len() + 4));
        self.out.put_slice(body);
        self.flush().await;
    }

    fn named(&mut self, tag: u8, kind: u8, name: &str) -> &mut Self {
        let mut body = BytesMut::new();
        body.put_u8(kind);
        put_cstr(&mut body, name);
        self.raw(tag, &body)
    }
}

/// Sends a CancelRequest for backend (`pid`, `secret`) to 127.0.0.1:`port`, then waits
/// (up to [`READ_TIMEOUT`]) for the server to close that connection.
pub async fn cancel(port: u16, pid: i32, secret: i32) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("cancel: connect to 127.0.0.1:{port}: {e}"));
    let mut packet = BytesMut::new();
    for word in [16, CANCEL_REQUEST_CODE, pid, secret] {
        packet.put_i32(word);
    }
    stream.write_all(&packet).await.expect("cancel: write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.read_to_end(&mut sink)).await;
}

impl Message {
    /// The tag as a char, e.g. `'Z'`.
    pub fn tag_char(&self) -> char {
        self.tag as char
    }

    /// Fields of an ErrorResponse (`E`) or NoticeResponse (`N`), by code letter.
    pub fn error_fields(&self) -> HashMap<char, String> {
        self.expect_tag(b"EN");
        let mut fields = HashMap::new();
        let mut body = &self.body[..];
        while let Some((&code, rest)) = body.split_first() {
            if code == 0 {
                break;
            }
            let (value, rest) = take_cstr(rest);
            fields.insert(code as char, value);
            body = rest;
        }
        fields
    }

    /// SQLSTATE of an `E` or `N` message.
    pub fn sqlstate(&self) -> String {
        self.error_fields().remove(&'C').unwrap_or_default()
    }

    /// The tag of a CommandComplete (`C`), e.g. `"SELECT 1"`.
    pub fn command_tag(&self) -> String {
        self.expect_tag(b"C");
        take_cstr(&self.body).0
    }

    /// The values of a DataRow (`D`) as text; `None` for SQL NULL.
    pub fn data_row(&self) -> Vec<Option<String>> {
        self.expect_tag(b"D");
        let mut body = &self.body[..];
        let count = body.get_i16();
        (0..count)
            .map(|_| {
                let len = body.get_i32();
                let len = usize::try_from(len).ok()?;
                let value = String::from_utf8_lossy(&body[..len]).into_owned();
                body.advance(len);
                Some(value)
            })
            .collect()
    }

    /// The column names of a RowDescription (`T`).
    pub fn row_description(&self) -> Vec<String> {
        self.expect_tag(b"T");
        let mut body = &self.body[..];
        let count = body.get_i16();
        (0..count)
            .map(|_| {
                let (name, rest) = take_cstr(body);
                body = &rest[18..]; // table oid, column, type oid, size, modifier, format
                name
            })
            .collect()
    }

    /// The status byte of a ReadyForQuery (`Z`): `b'I'`, `b'T'` or `b'E'`.
    pub fn ready_status(&self) -> u8 {
        self.expect_tag(b"Z");
        self.body[0]
    }

    /// Name and value of a ParameterStatus (`S`).
    pub fn parameter_status(&self) -> (String, String) {
        self.expect_tag(b"S");
        let (name, rest) = take_cstr(&self.body);
        (name, take_cstr(rest).0)
    }

    /// (process id, secret key) of a BackendKeyData (`K`).
    pub fn backend_key(&self) -> (i32, i32) {
        self.expect_tag(b"K");
        let mut body = &self.body[..];
        (body.get_i32(), body.get_i32())
    }

    /// The method code of an Authentication message (`R`): 0 ok, 3 cleartext, 10 SASL, ...
    pub fn auth_code(&self) -> i32 {
        self.expect_tag(b"R");
        (&self.body[..]).get_i32()
    }

    /// Compact form used by [`summarize`]: `"T"`, `"D:1,foo"` (NULL as `NULL`),
    /// `"C:SELECT 1"`, `"E:42501"`, `"N:WARNING"`, `"Z:I"`, `"R:3"`, `"V:<result>"`,
    /// else the tag alone (`"1"`, `"2"`, `"n"`, `"s"`, `"t"`, `"I"`, `"S"`, ...).
    pub fn summary(&self) -> String {
        match self.tag {
            b'D' => {
                let values: Vec<String> =
                    self.data_row().into_iter().map(|v| v.unwrap_or_else(|| "NULL".to_string())).collect();
                format!("D:{}", values.join(","))
            }
            b'C' => format!("C:{}", self.command_tag()),
            b'E' => format!("E:{}", self.sqlstate()),
            b'N' => format!("N:{}", ErrorFields(self.error_fields()).severity()),
            b'Z' => format!("Z:{}", self.ready_status() as char),
            b'R' => format!("R:{}", self.auth_code()),
            b'V' => format!("V:{}", self.function_result()),
            tag => (tag as char).to_string(),
        }
    }

    /// The result of a FunctionCallResponse (`V`) as text, `NULL` for null.
    fn function_result(&self) -> String {
        let mut body = &self.body[..];
        match usize::try_from(body.get_i32()) {
            Ok(len) => String::from_utf8_lossy(&body[..len]).into_owned(),
            Err(_) => "NULL".to_string(),
        }
    }

    fn expect_tag(&self, tags: &[u8]) {
        assert!(
            tags.contains(&self.tag),
            "expected a message tagged {:?}, got {self:?}",
            tags.iter().map(|t| *t as char).collect::<Vec<_>>()
        );
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Message({:?}, {:?})", self.tag as char, self.body)
    }
}

/// [`Message::summary`] of each message, for asserting exact sequences.
pub fn summarize(messages: &[Message]) -> Vec<String> {
    messages.iter().map(Message::summary).collect()
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// Parameter count, then each value as length + bytes (-1 for NULL).
fn put_values(buf: &mut BytesMut, values: &[Option<&[u8]>]) {
    buf.put_i16(len_i16(values.len()));
    for value in values {
        match value {
            Some(bytes) => {
                buf.put_i32(len_i32(bytes.len()));
                buf.put_slice(bytes);
            }
            None => buf.put_i32(-1),
        }
    }
}

/// A NUL-terminated string and what follows it (the whole rest if there is no NUL).
fn take_cstr(buf: &[u8]) -> (String, &[u8]) {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let value = String::from_utf8_lossy(&buf[..end]).into_owned();
    (value, buf.get(end + 1..).unwrap_or(&[]))
}

fn len_i16(n: usize) -> i16 {
    i16::try_from(n).expect("count fits in i16")
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).expect("length fits in i32")
}
