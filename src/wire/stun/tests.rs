use super::*;
use crate::wire::wg::{self, Datagram};

/// Hex as RFC 5769 prints it (spaces and line breaks ignored) to bytes.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

const VECTOR_TRANSACTION: TransactionId = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1 "Sample Request": SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
/// MESSAGE-INTEGRITY, FINGERPRINT.
const SAMPLE_REQUEST: &str = "
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";

/// RFC 5769 §2.2 "Sample IPv4 Response": XOR-MAPPED-ADDRESS 192.0.2.1:32853.
const SAMPLE_IPV4_RESPONSE: &str = "
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

/// RFC 5769 §2.3 "Sample IPv6 Response": XOR-MAPPED-ADDRESS
/// [2001:db8:1234:5678:11:2233:4455:6677]:32853.
const SAMPLE_IPV6_RESPONSE: &str = "
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

#[test]
fn rfc_5769_request_reports_its_unknown_required_attribute() {
    let bytes = hex(SAMPLE_REQUEST);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!((m.class, m.method), (Class::Request, BINDING));
    assert_eq!(m.transaction, VECTOR_TRANSACTION);
    assert_eq!(m.software, Some("STUN test client"));
    // PRIORITY (0x0024, ICE) is comprehension-required and unknown here; ICE-CONTROLLED
    // (0x8029) is optional and skipped; USERNAME and MESSAGE-INTEGRITY are read past.
    assert_eq!(m.unknown.as_slice(), &[0x0024]);
    assert!(m.fingerprint);
}

#[test]
fn rfc_5769_responses_decode_their_xor_mapped_addresses() {
    for (vector, expected) in [
        (SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853"),
        (
            SAMPLE_IPV6_RESPONSE,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let bytes = hex(vector);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!((m.class, m.method), (Class::Success, BINDING));
        assert_eq!(m.xor_mapped_address, Some(expected.parse().unwrap()));
        assert_eq!(m.mapped(), Some(expected.parse().unwrap()));
        assert_eq!(m.software, Some("test vector"));
        assert!(m.fingerprint && m.unknown.is_empty());
    }
}

#[test]
fn encoder_writes_the_rfc_5769_xor_addresses_byte_for_byte() {
    let v4 = Encoder::new(Class::Success, BINDING, VECTOR_TRANSACTION)
        .xor_mapped_address("192.0.2.1:32853".parse().unwrap())
        .clone()
        .finish();
    assert_eq!(v4[20..], hex("00 20 00 08 00 01 a1 47 e1 12 a6 43")[..]);
    let v6 = Encoder::new(Class::Success, BINDING, VECTOR_TRANSACTION)
        .xor_mapped_address(
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap(),
        )
        .clone()
        .finish();
    assert_eq!(
        v6[20..],
        hex("00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9")[..]
    );
}

#[test]
fn a_changed_byte_fails_the_fingerprint() {
    let mut bytes = hex(SAMPLE_IPV4_RESPONSE);
    bytes[30] ^= 1; // inside SOFTWARE
    assert_eq!(Message::parse(&bytes), Err(StunError::BadFingerprint));
}

fn full_reply(t: TransactionId, a: &str, b: &str) -> Vec<u8> {
    let mut e = Encoder::new(Class::Success, BINDING, t);
    e.xor_mapped_address(a.parse().unwrap())
        .mapped_address(a.parse().unwrap())
        .response_origin(b.parse().unwrap())
        .other_address(b.parse().unwrap())
        .software("lanparty-lite");
    e.finish_with_fingerprint()
}

#[test]
fn every_attribute_round_trips_for_both_families() {
    let t = [7u8; 12];
    for (a, b) in [
        ("203.0.113.9:40000", "198.51.100.2:3479"),
        ("[2001:db8::9]:40000", "[2001:db8::2]:3479"),
    ] {
        let bytes = full_reply(t, a, b);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.xor_mapped_address, Some(a.parse().unwrap()));
        assert_eq!(m.mapped_address, Some(a.parse().unwrap()));
        assert_eq!(m.response_origin, Some(b.parse().unwrap()));
        assert_eq!(m.other_address, Some(b.parse().unwrap()));
        assert_eq!(m.software, Some("lanparty-lite"));
        assert!(m.fingerprint);
    }
    let mut e = Encoder::new(Class::Request, BINDING, t);
    e.change_request(ChangeRequest {
        ip: true,
        port: false,
    });
    let bytes = e.finish();
    assert_eq!(bytes.len(), 28);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.change_request,
        Some(ChangeRequest {
            ip: true,
            port: false
        })
    );
    assert!(!m.fingerprint);
    let mut e = Encoder::new(Class::Request, BINDING, t);
    e.response_port(54064);
    assert_eq!(
        Message::parse(&e.finish()).unwrap().response_port,
        Some(54064)
    );
    let mut e = Encoder::new(Class::Error, BINDING, t);
    e.error_code(420, "Unknown Attribute")
        .unknown_attributes(&[0x0003, 0x0024]);
    let bytes = e.finish_with_fingerprint();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.error_code,
        Some(ErrorCode {
            code: 420,
            reason: "Unknown Attribute"
        })
    );
    assert!(m.unknown.is_empty(), "UNKNOWN-ATTRIBUTES itself is known");
}

#[test]
fn message_types_interleave_class_and_method_bits() {
    let t = [0u8; 12];
    for (class, ty) in [
        (Class::Request, 0x0001),
        (Class::Indication, 0x0011),
        (Class::Success, 0x0101),
        (Class::Error, 0x0111),
    ] {
        let bytes = Encoder::new(class, BINDING, t).finish();
        assert_eq!(be16(&bytes, 0), ty);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!((m.class, m.method), (class, BINDING));
    }
    assert_eq!(
        split_type(message_type(Class::Error, 0xABC)),
        (Class::Error, 0xABC)
    );
}

#[test]
fn malformed_headers_are_rejected() {
    let good = Encoder::new(Class::Request, BINDING, [1; 12]).finish();
    assert_eq!(Message::parse(&good[..19]), Err(StunError::TooShort));
    let mut top_bits = good.clone();
    top_bits[0] |= 0x40;
    assert_eq!(Message::parse(&top_bits), Err(StunError::NotStun));
    let mut cookie = good.clone();
    cookie[5] ^= 1;
    assert_eq!(Message::parse(&cookie), Err(StunError::NotStun));
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0; 4]);
    assert_eq!(Message::parse(&trailing), Err(StunError::BadLength));
    let mut odd = trailing.clone();
    odd[3] = 2;
    assert_eq!(Message::parse(&odd), Err(StunError::BadLength));
}

/// Raw (type, value) attribute pairs.
type Attrs<'a> = &'a [(u16, &'a [u8])];

/// A Binding request carrying `attrs`, with a correct length.
fn with_attributes(attrs: Attrs) -> Vec<u8> {
    let mut e = Encoder::new(Class::Request, BINDING, [2; 12]);
    for (ty, value) in attrs {
        e.attribute(*ty, value);
    }
    e.finish()
}

#[test]
fn malformed_attributes_are_rejected() {
    let mut truncated = with_attributes(&[(attr::SOFTWARE, b"abcd")]);
    truncated[22..24].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(
        Message::parse(&truncated),
        Err(StunError::TruncatedAttribute)
    );
    let cases: [(Attrs, StunError); 7] = [
        (
            &[(attr::XOR_MAPPED_ADDRESS, &[0, 3, 0, 1, 1, 2, 3, 4])],
            StunError::BadAddress,
        ),
        (
            &[(attr::MAPPED_ADDRESS, &[0, 1, 0, 1, 1, 2, 3])],
            StunError::BadAddress,
        ),
        (
            &[(attr::CHANGE_REQUEST, &[0, 0, 6])],
            StunError::BadChangeRequest,
        ),
        (
            &[(attr::RESPONSE_PORT, &[0, 1])],
            StunError::BadChangeRequest,
        ),
        (
            &[(attr::ERROR_CODE, &[0, 0, 7, 0])],
            StunError::BadErrorCode,
        ),
        (
            &[(attr::ERROR_CODE, &[0, 0, 4, 100])],
            StunError::BadErrorCode,
        ),
        (&[(attr::SOFTWARE, &[0xff, 0xfe])], StunError::BadText),
    ];
    for (attrs, err) in cases {
        assert_eq!(
            Message::parse(&with_attributes(attrs)),
            Err(err),
            "{attrs:?}"
        );
    }
}

#[test]
fn fingerprint_must_come_last() {
    let mut e = Encoder::new(Class::Request, BINDING, [3; 12]);
    e.software("x");
    let mut bytes = e.finish_with_fingerprint();
    bytes.extend_from_slice(&[0x80, 0x22, 0, 0]);
    let len = (bytes.len() - HEADER_LEN) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(Message::parse(&bytes), Err(StunError::MisplacedFingerprint));
}

#[test]
fn first_of_repeated_attributes_counts_and_nothing_after_integrity_is_read() {
    let a = [0, 1, 0x0d, 0x96, 192, 0, 2, 1];
    let b = [0, 1, 0x0d, 0x97, 192, 0, 2, 2];
    let bytes = with_attributes(&[
        (attr::MAPPED_ADDRESS, &a),
        (attr::MAPPED_ADDRESS, &b),
        (attr::MESSAGE_INTEGRITY, &[0; 20]),
        (attr::SOFTWARE, b"after"),
        (0x0026, &[0; 4]),
    ]);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.mapped_address, Some("192.0.2.1:3478".parse().unwrap()));
    assert_eq!(m.software, None);
    assert!(m.unknown.is_empty());
}

#[test]
fn unknown_required_attributes_are_collected_optional_ones_skipped() {
    let bytes = with_attributes(&[
        (0x0024, &[0; 4]),                          // PRIORITY (ICE): not ours
        (0x8029, &[0; 8]),                          // ICE-CONTROLLED: optional
        (0x0026, &[0; 4]),                          // PADDING: not supported
        (0x0024, &[0; 4]),                          // repeated: listed once
        (attr::RESPONSE_PORT, &[0x0d, 0x96, 0, 0]), // known
    ]);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.unknown.as_slice(), &[0x0024, 0x0026]);
    assert_eq!(m.response_port, Some(3478));
}

#[test]
fn stun_is_told_apart_from_wireguard_and_our_own_messages() {
    let binding = [
        Encoder::new(Class::Request, BINDING, [0x21; 12]).finish(),
        full_reply([9; 12], "192.0.2.1:1", "192.0.2.2:2"),
        Encoder::new(Class::Error, BINDING, [0; 12]).finish(),
    ];
    for m in &binding {
        assert!(is_stun(m));
        assert_eq!(wg::classify(m), Datagram::Unknown, "{m:02x?}");
    }
    // WireGuard with indices as lanparty-lite assigns them (`peer_index << 8`: low byte 0),
    // even where the other bytes spell the cookie.
    for (ty, len) in [(1u8, 148usize), (2, 92), (3, 64), (4, 32)] {
        let mut m = vec![0u8; len];
        m[0] = ty;
        m[4..8].copy_from_slice(&(0x42A4_1200u32).to_le_bytes());
        m[8..12].copy_from_slice(&(0x42A4_1200u32).to_le_bytes());
        assert_ne!(wg::classify(&m), Datagram::Unknown);
        assert!(!is_stun(&m), "type {ty}");
    }
    let mut ours = binding[0].clone();
    ours[0] |= 0x80;
    assert!(!is_stun(&ours));
    assert!(!is_stun(&binding[0][..19]));
}

#[test]
fn long_text_is_cut_at_a_character_boundary() {
    let long = "é".repeat(500); // 1000 bytes
    let mut e = Encoder::new(Class::Error, BINDING, [4; 12]);
    e.error_code(BAD_REQUEST, &long).software(&long);
    let bytes = e.finish();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.software.map(str::len), Some(762));
    assert_eq!(
        m.error_code.map(|e| (e.code, e.reason.len())),
        Some((400, 762))
    );
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}
