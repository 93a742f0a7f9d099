//! Protocol messages as byte fixtures for the exchange's unit tests: what clients and
//! servers put on the wire (type byte, length, body), built by hand so a test says
//! exactly what it feeds.

pub(crate) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub(crate) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub(crate) fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

pub(crate) fn parse_complete() -> Vec<u8> {
    msg(b'1', b"")
}
pub(crate) fn bind_complete() -> Vec<u8> {
    msg(b'2', b"")
}
pub(crate) fn close_complete() -> Vec<u8> {
    msg(b'3', b"")
}
pub(crate) fn no_data() -> Vec<u8> {
    msg(b'n', b"")
}
pub(crate) fn portal_suspended() -> Vec<u8> {
    msg(b's', b"")
}
pub(crate) fn empty_query() -> Vec<u8> {
    msg(b'I', b"")
}

pub(crate) fn parameter_description(oids: &[u32]) -> Vec<u8> {
    let mut b = (oids.len() as i16).to_be_bytes().to_vec();
    oids.iter()
        .for_each(|o| b.extend_from_slice(&o.to_be_bytes()));
    msg(b't', &b)
}

/// Int4 text columns.
pub(crate) fn row_description(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as i16).to_be_bytes().to_vec();
    for c in cols {
        b.extend(cstr(c));
        b.extend_from_slice(&0u32.to_be_bytes()); // table
        b.extend_from_slice(&0i16.to_be_bytes()); // column number
        b.extend_from_slice(&23u32.to_be_bytes()); // int4
        b.extend_from_slice(&4i16.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes()); // text
    }
    msg(b'T', &b)
}

pub(crate) fn data_row(vals: &[&str]) -> Vec<u8> {
    let mut b = (vals.len() as i16).to_be_bytes().to_vec();
    for v in vals {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    msg(b'D', &b)
}

pub(crate) fn command_complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstr(tag))
}

pub(crate) fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

pub(crate) fn report(tag: u8, severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        b.push(t);
        b.extend(cstr(v));
    }
    b.push(0);
    msg(tag, &b)
}

pub(crate) fn error(code: &str, message: &str) -> Vec<u8> {
    report(b'E', "ERROR", code, message)
}
pub(crate) fn fatal(code: &str, message: &str) -> Vec<u8> {
    report(b'E', "FATAL", code, message)
}
pub(crate) fn notice(message: &str) -> Vec<u8> {
    report(b'N', "NOTICE", "00000", message)
}

pub(crate) fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    msg(b'S', &cat(&[cstr(name), cstr(value)]))
}

pub(crate) fn notification(pid: u32, channel: &str, payload: &str) -> Vec<u8> {
    msg(
        b'A',
        &cat(&[pid.to_be_bytes().to_vec(), cstr(channel), cstr(payload)]),
    )
}

pub(crate) fn copy_response(tag: u8) -> Vec<u8> {
    msg(tag, &[0, 0, 1, 0, 0]) // text, one column
}
pub(crate) fn copy_data(row: &str) -> Vec<u8> {
    msg(b'd', row.as_bytes())
}
pub(crate) fn copy_done() -> Vec<u8> {
    msg(b'c', b"")
}

pub(crate) fn function_call_response(v: &str) -> Vec<u8> {
    msg(
        b'V',
        &cat(&[(v.len() as i32).to_be_bytes().to_vec(), v.into()]),
    )
}

// Client messages.

pub(crate) fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstr(sql))
}
pub(crate) fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(b'P', &cat(&[cstr(name), cstr(sql), vec![0, 0]]))
}
/// Text parameters, text results.
pub(crate) fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = cat(&[cstr(portal), cstr(stmt), vec![0, 0]]);
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&[0, 0]);
    msg(b'B', &b)
}
pub(crate) fn describe(kind: u8, name: &str) -> Vec<u8> {
    msg(b'D', &cat(&[vec![kind], cstr(name)]))
}
pub(crate) fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    msg(b'E', &cat(&[cstr(portal), max_rows.to_be_bytes().to_vec()]))
}
pub(crate) fn close(kind: u8, name: &str) -> Vec<u8> {
    msg(b'C', &cat(&[vec![kind], cstr(name)]))
}
pub(crate) fn sync() -> Vec<u8> {
    msg(b'S', b"")
}
pub(crate) fn flush() -> Vec<u8> {
    msg(b'H', b"")
}
pub(crate) fn function_call() -> Vec<u8> {
    msg(b'F', &[0, 0, 0, 42, 0, 0, 0, 0, 0, 0])
}

/// A byte stream cut into its messages (assertion failures then show which one).
pub(crate) fn msgs(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while b.len() >= 5 {
        let n = 1 + u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        v.push(b[..n].to_vec());
        b = &b[n..];
    }
    v
}

/// The statement a Parse creates.
pub(crate) fn parse_name(m: &[u8]) -> String {
    let end = m[5..].iter().position(|&c| c == 0).unwrap();
    String::from_utf8(m[5..5 + end].to_vec()).unwrap()
}
