//! Binary results.

use super::*;
use tokio_postgres::types::Type;

/// tokio-postgres asks for binary results; every value must decode exactly, and be the
/// same as from PostgreSQL directly (a proxy that re-encodes or truncates shows here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_decode_exactly() {
    let env = start().await;
    let sql = "select (-32768)::int2, 2147483647::int4, (-9223372036854775808)::int8, \
               3.25::float4, 0.1::float8 + 0.2::float8, '-Infinity'::float8, \
               12345678901234567890.000000001::numeric::text, '\\x00ff10'::bytea, false, \
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid::text, \
               array[1, -2, 2147483647]::int4[], '{}'::int4[], array['a', NULL, 'c']::text[]";
    let via_proxy = env
        .connect()
        .await
        .query_one(sql, &[])
        .await
        .expect("through the proxy");
    let direct = env
        .direct()
        .await
        .query_one(sql, &[])
        .await
        .expect("direct");

    for row in [&via_proxy, &direct] {
        assert_eq!(row.columns()[0].type_(), &Type::INT2);
        assert_eq!(row.get::<_, i16>(0), i16::MIN);
        assert_eq!(row.get::<_, i32>(1), i32::MAX);
        assert_eq!(row.get::<_, i64>(2), i64::MIN);
        assert_eq!(row.get::<_, f32>(3), 3.25);
        assert_eq!(row.get::<_, f64>(4).to_bits(), (0.1f64 + 0.2f64).to_bits());
        assert_eq!(row.get::<_, f64>(5), f64::NEG_INFINITY);
        assert_eq!(row.get::<_, String>(6), "12345678901234567890.000000001");
        assert_eq!(row.get::<_, Vec<u8>>(7), vec![0x00, 0xff, 0x10]);
        assert!(!row.get::<_, bool>(8));
        assert_eq!(
            row.get::<_, String>(9),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(row.get::<_, Vec<i32>>(10), vec![1, -2, i32::MAX]);
        assert_eq!(row.get::<_, Vec<i32>>(11), Vec::<i32>::new());
        assert_eq!(
            row.get::<_, Vec<Option<String>>>(12),
            vec![s("a"), None, s("c")]
        );
    }
}
