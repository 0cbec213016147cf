//! Encoding: packets to their compact text form, each in one allocation of exactly the right
//! size (or appended to a caller's buffer), with the JSON string escaping event names need.

use super::{Packet, PacketKind, MAIN_NAMESPACE};

/// The exact length of [`encode`]'s output.
pub fn encoded_len(kind: PacketKind, nsp: &str, id: Option<u64>, data: Option<&str>, attachments: usize) -> usize {
    header_len(kind, nsp, id, attachments) + data.map_or(0, str::len)
}

/// Encodes a packet in compact form: the attachment count only for BINARY_* kinds (ignored
/// otherwise), the namespace only when it is not `/` (an empty one counts as `/`), then the
/// ack id and the data verbatim. One allocation of exactly the right size.
///
/// The caller guarantees what decoding guarantees: `nsp` starts with `/` and has no `,`, and
/// `data` is valid JSON of the right shape for `kind`.
pub fn encode(kind: PacketKind, nsp: &str, id: Option<u64>, data: Option<&str>, attachments: usize) -> String {
    let mut out = String::with_capacity(encoded_len(kind, nsp, id, data, attachments));
    write_header(&mut out, kind, nsp, id, attachments);
    out.push_str(data.unwrap_or(""));
    out
}

/// Appends the [`encode`] form to `out`, reserving exactly what it needs. Lets a caller put the
/// Engine.IO `4` in front (or batch several packets) in the same buffer.
pub fn encode_into(
    out: &mut String,
    kind: PacketKind,
    nsp: &str,
    id: Option<u64>,
    data: Option<&str>,
    attachments: usize,
) {
    out.reserve_exact(encoded_len(kind, nsp, id, data, attachments));
    write_header(out, kind, nsp, id, attachments);
    out.push_str(data.unwrap_or(""));
}

/// Encodes a decoded (or locally built) packet; `decode(&encode_packet(p))` gives back `p`.
pub fn encode_packet(packet: &Packet) -> String {
    encode(packet.kind, &packet.nsp, packet.id, packet.data_json(), packet.attachments)
}

/// Encodes an event `[<event>,<args_tail>]`: `event` is escaped as a JSON string, `args_tail`
/// is raw JSON values separated by commas, without brackets (as
/// [`args_tail`](super::args_tail) returns; empty for none). With `attachments > 0` the packet
/// is a BINARY_EVENT and `args_tail` must contain the matching placeholders. One exactly sized
/// allocation.
pub fn encode_event(nsp: &str, id: Option<u64>, event: &str, args_tail: &str, attachments: usize) -> String {
    let mut out = String::new();
    encode_event_into(&mut out, nsp, id, event, args_tail, attachments);
    out
}

/// Appends the [`encode_event`] form to `out`, reserving exactly what it needs.
pub fn encode_event_into(
    out: &mut String,
    nsp: &str,
    id: Option<u64>,
    event: &str,
    args_tail: &str,
    attachments: usize,
) {
    let kind = if attachments > 0 { PacketKind::BinaryEvent } else { PacketKind::Event };
    let args_len = if args_tail.is_empty() { 0 } else { 1 + args_tail.len() };
    out.reserve_exact(header_len(kind, nsp, id, attachments) + 2 + json_str_len(event) + args_len);
    write_header(out, kind, nsp, id, attachments);
    out.push('[');
    write_json_str(out, event);
    if !args_tail.is_empty() {
        out.push(',');
        out.push_str(args_tail);
    }
    out.push(']');
}

/// Encodes an ACK `[<args_tail>]` for ack id `id` (a BINARY_ACK when `attachments > 0`).
pub fn encode_ack(nsp: &str, id: u64, args_tail: &str, attachments: usize) -> String {
    let mut out = String::new();
    encode_ack_into(&mut out, nsp, id, args_tail, attachments);
    out
}

/// Appends the [`encode_ack`] form to `out`, reserving exactly what it needs.
pub fn encode_ack_into(out: &mut String, nsp: &str, id: u64, args_tail: &str, attachments: usize) {
    let kind = if attachments > 0 { PacketKind::BinaryAck } else { PacketKind::Ack };
    out.reserve_exact(header_len(kind, nsp, Some(id), attachments) + 2 + args_tail.len());
    write_header(out, kind, nsp, Some(id), attachments);
    out.push('[');
    out.push_str(args_tail);
    out.push(']');
}

/// Encodes the server's CONNECT answer `{"sid":"<sid>"}` (the test suite checks the object
/// has exactly the key `sid`).
pub fn encode_connect(nsp: &str, sid: &str) -> String {
    encode_object_with_string(PacketKind::Connect, nsp, "{\"sid\":", sid)
}

/// Encodes a CONNECT_ERROR `{"message":"<message>"}`, e.g. `4/random,{"message":"Invalid
/// namespace"}` as the test suite expects for an unknown namespace.
pub fn encode_connect_error(nsp: &str, message: &str) -> String {
    encode_object_with_string(PacketKind::ConnectError, nsp, "{\"message\":", message)
}

/// Encodes a DISCONNECT for `nsp` (`1`, or `1/admin,`).
pub fn encode_disconnect(nsp: &str) -> String {
    encode(PacketKind::Disconnect, nsp, None, None, 0)
}

/// Encodes `<header><prefix>"<value>"}`, the one-string-member objects of CONNECT and
/// CONNECT_ERROR.
fn encode_object_with_string(kind: PacketKind, nsp: &str, prefix: &str, value: &str) -> String {
    let mut out = String::with_capacity(header_len(kind, nsp, None, 0) + prefix.len() + json_str_len(value) + 1);
    write_header(&mut out, kind, nsp, None, 0);
    out.push_str(prefix);
    write_json_str(&mut out, value);
    out.push('}');
    out
}

/// Whether `nsp` is written out (anything but the main namespace; empty counts as main).
fn names_namespace(nsp: &str) -> bool {
    !nsp.is_empty() && nsp != MAIN_NAMESPACE
}

/// Length of everything before the data.
fn header_len(kind: PacketKind, nsp: &str, id: Option<u64>, attachments: usize) -> usize {
    1 + if kind.is_binary() { dec_len(attachments as u64) + 1 } else { 0 }
        + if names_namespace(nsp) { nsp.len() + 1 } else { 0 }
        + id.map_or(0, dec_len)
}

/// Writes everything before the data.
fn write_header(out: &mut String, kind: PacketKind, nsp: &str, id: Option<u64>, attachments: usize) {
    out.push(char::from(kind.as_byte()));
    if kind.is_binary() {
        write_dec(out, attachments as u64);
        out.push('-');
    }
    if names_namespace(nsp) {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        write_dec(out, id);
    }
}

fn dec_len(n: u64) -> usize {
    crate::util::text::decimal_len(n)
}

/// Appends `n` in decimal.
fn write_dec(out: &mut String, n: u64) {
    out.push_str(crate::util::text::decimal(n, &mut [0; 20]));
}

/// Length of `s` as a quoted JSON string.
fn json_str_len(s: &str) -> usize {
    crate::util::text::json_str_len(s)
}

/// Appends `s` as a quoted JSON string.
fn write_json_str(out: &mut String, s: &str) {
    crate::util::text::json_str(s, |piece| out.push_str(piece));
}

#[cfg(test)]
mod tests {
    use super::super::event_name;
    use super::super::tests::{d, PH0, PH1};
    use super::*;

    #[test]
    fn encoders() {
        assert_eq!(encode(PacketKind::Event, "/", None, Some(r#"["x"]"#), 0), r#"2["x"]"#);
        assert_eq!(encode(PacketKind::Event, "", Some(3), Some(r#"["x"]"#), 0), r#"23["x"]"#);
        assert_eq!(encode(PacketKind::Event, "/a", None, Some(r#"["x"]"#), 5), r#"2/a,["x"]"#);
        assert_eq!(encode(PacketKind::BinaryAck, "/a", Some(0), Some("[]"), 12), "612-/a,0[]");
        assert_eq!(encode(PacketKind::Connect, "/", None, None, 0), "0");
        assert_eq!(encode_event("/", Some(9), "x", "", 0), r#"29["x"]"#);
        assert_eq!(encode_event("/n", None, "quote\"nl\nctl\u{1}", "1", 0), r#"2/n,["quote\"nl\nctl\u0001",1]"#);
        assert_eq!(encode_ack("/", 0, "", 0), "30[]");
        assert_eq!(encode_connect("/", "a\"b"), r#"0{"sid":"a\"b"}"#);

        // Exactly sized allocations.
        for s in [
            encode(PacketKind::BinaryEvent, "/admin", Some(123), Some(&format!(r#"["x",{PH0}]"#)), 1),
            encode_event("/admin", Some(1), "é\u{7}", &format!(r#"{{"a":1}},{PH1},{PH0}"#), 2),
            encode_ack("/admin", 77, "1,2", 0),
            encode_connect("/admin", "sid\\"),
            encode_connect_error("/", "nope\t"),
            encode_disconnect("/admin"),
        ] {
            assert_eq!(s.len(), s.capacity(), "{s:?}");
            // And they decode.
            d(&s);
        }
        assert_eq!(
            encoded_len(PacketKind::BinaryEvent, "/admin", Some(123), Some(r#"["x"]"#), 3),
            r#"53-/admin,123["x"]"#.len()
        );

        // The escaper agrees with serde_json.
        let nasty: String = (0u8..0x80).map(char::from).chain("é😀\u{2028}".chars()).collect();
        let ours = encode_event("/", None, &nasty, "", 0);
        let theirs = format!("2[{}]", serde_json::to_string(&nasty).unwrap());
        assert_eq!(ours, theirs);
        assert_eq!(event_name(&d(&ours)).as_deref(), Some(nasty.as_str()));

        // The `_into` forms append after an Engine.IO prefix in one buffer.
        let mut frame = String::from("4");
        encode_event_into(&mut frame, "/", Some(1), "ev", "true", 0);
        assert_eq!(frame, r#"421["ev",true]"#);
        let mut frame = String::from("4");
        encode_ack_into(&mut frame, "/x", 2, "null", 0);
        assert_eq!(frame, "43/x,2[null]");
        let mut frame = String::from("4");
        encode_into(&mut frame, PacketKind::Connect, "/x", None, Some(r#"{"sid":"s"}"#), 0);
        assert_eq!(frame, r#"40/x,{"sid":"s"}"#);
    }
}
