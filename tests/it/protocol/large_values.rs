//! Large values.

use super::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

/// 1 MB text and bytea values in both directions: messages far larger than a socket
/// buffer, split across many reads, must arrive byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_round_trip() {
    const MB: usize = 1 << 20;
    let env = start().await;
    let c = env.connect().await;

    // Deterministic, not compressible into something trivial.
    let mut x: u32 = 12345;
    let mut next = || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    };
    let text: String = (0..MB).map(|_| (b' ' + next() % 95) as char).collect();
    let bytes: Vec<u8> = (0..MB).map(|_| next()).collect();

    c.batch_execute("create table big (id int, t text, b bytea)")
        .await
        .unwrap();
    c.execute("insert into big values (1, $1, $2)", &[&text, &bytes])
        .await
        .expect("1 MB parameters");

    // The server got exactly what was sent...
    let row = c
        .query_one(
            "select length(t), length(b), encode(sha256(convert_to(t, 'UTF8')), 'hex'), \
             encode(sha256(b), 'hex') from big",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0) as usize, MB);
    assert_eq!(row.get::<_, i32>(1) as usize, MB);
    assert_eq!(row.get::<_, String>(2), sha256_hex(text.as_bytes()));
    assert_eq!(row.get::<_, String>(3), sha256_hex(&bytes));

    // ...and it comes back exactly, in binary format...
    let row = c.query_one("select t, b from big", &[]).await.unwrap();
    assert!(
        row.get::<_, String>(0) == text,
        "1 MB text differs after the round trip"
    );
    assert!(
        row.get::<_, Vec<u8>>(1) == bytes,
        "1 MB bytea differs after the round trip"
    );

    // ...and in text format (bytea as 2 MB of hex).
    let st = statements(&c.simple_query("select t, b from big").await.unwrap());
    let got = &st[0].0[0];
    assert!(
        got[0].as_deref() == Some(text.as_str()),
        "1 MB text differs in the simple protocol"
    );
    assert!(
        got[1].as_deref() == Some(format!("\\x{}", hex(&bytes)).as_str()),
        "bytea hex differs"
    );

    let v = simple_value(&c, "select repeat('x', 1048576)")
        .await
        .expect("not NULL");
    assert_eq!(v.len(), MB);
    assert!(v.bytes().all(|b| b == b'x'));
}
