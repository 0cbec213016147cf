//! Reassembly of binary packets: a BINARY_EVENT or BINARY_ACK and the Engine.IO binary messages
//! that carry its attachments.

use bytes::Bytes;

use super::decode::decode;
use super::{Packet, SioError};

/// Collects the binary attachments that follow a BINARY_EVENT or BINARY_ACK.
///
/// Feed it every Socket.IO message of one connection in arrival order: text through
/// [`push_text`](Self::push_text) (or decoded packets through
/// [`push_packet`](Self::push_packet)) and Engine.IO binary messages through
/// [`push_binary`](Self::push_binary). Each call returns `Some((packet, attachments))` once a
/// packet is complete: immediately for non-binary packets, after the announced number of
/// binary messages for binary ones. Placeholders stay in the packet's JSON; attachment `k` is
/// `attachments[k]`.
///
/// Any error is fatal for the connection, as in the reference decoder, and leaves the
/// assembler as it was. Buffered memory is bounded by the `max_attachments` given to
/// [`decode`] times the Engine.IO message size limit.
#[derive(Debug, Default)]
pub struct BinaryAssembler {
    /// The binary packet waiting for attachments, and those received so far.
    pending: Option<(Packet, Vec<Bytes>)>,
}

/// A complete packet and its binary attachments, in placeholder order (empty for non-binary
/// packets).
pub type Assembled = (Packet, Vec<Bytes>);

impl BinaryAssembler {
    /// An assembler with nothing pending.
    pub fn new() -> BinaryAssembler {
        BinaryAssembler { pending: None }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// How many more binary messages the pending packet needs (0 when none is pending).
    pub fn missing(&self) -> usize {
        self.pending.as_ref().map_or(0, |(packet, got)| packet.attachments.saturating_sub(got.len()))
    }

    /// Decodes a text message and feeds the packet in. A text message while attachments are
    /// pending is refused before it is decoded, as the reference does.
    pub fn push_text(&mut self, text: &str, max_attachments: usize) -> Result<Option<Assembled>, SioError> {
        if self.pending.is_some() {
            return Err(SioError::UnexpectedText);
        }
        self.push_packet(decode(text, max_attachments)?)
    }

    /// Feeds a decoded packet in. Packets from [`decode`] have consistent placeholders; a
    /// locally built binary packet should go through
    /// [`check_placeholders`](super::check_placeholders) first.
    pub fn push_packet(&mut self, packet: Packet) -> Result<Option<Assembled>, SioError> {
        if self.pending.is_some() {
            return Err(SioError::UnexpectedText);
        }
        if packet.kind.is_binary() && packet.attachments > 0 {
            let buffers = Vec::with_capacity(packet.attachments);
            self.pending = Some((packet, buffers));
            return Ok(None);
        }
        Ok(Some((packet, Vec::new())))
    }

    /// Feeds an Engine.IO binary message in: the next attachment of the pending packet.
    pub fn push_binary(&mut self, data: Bytes) -> Result<Option<Assembled>, SioError> {
        let Some((packet, buffers)) = self.pending.as_mut() else {
            return Err(SioError::UnexpectedBinary);
        };
        buffers.push(data);
        if buffers.len() < packet.attachments {
            return Ok(None);
        }
        Ok(self.pending.take())
    }

    /// Drops any pending packet and its attachments (for example when the connection closes).
    pub fn reset(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{d, MAX, PH0};
    use super::super::PacketKind;
    use super::*;

    #[test]
    fn assembler() {
        let mut asm = BinaryAssembler::default();
        // Non-binary packets pass straight through.
        let (p, bins) = asm.push_text(r#"2["x"]"#, MAX).unwrap().unwrap();
        assert_eq!(p.kind, PacketKind::Event);
        assert!(bins.is_empty());
        // A binary packet announcing no attachments completes at once.
        let (p, bins) = asm.push_text(r#"50-["x"]"#, MAX).unwrap().unwrap();
        assert_eq!(p.kind, PacketKind::BinaryEvent);
        assert!(bins.is_empty());
        // Binary without a pending packet.
        assert_eq!(asm.push_binary(Bytes::from_static(b"x")), Err(SioError::UnexpectedBinary));
        // Text while attachments are pending, even valid text, and the state survives it.
        assert_eq!(asm.push_text(&format!(r#"51-["x",{PH0}]"#), MAX), Ok(None));
        assert!(asm.is_pending());
        assert_eq!(asm.push_text(r#"2["y"]"#, MAX), Err(SioError::UnexpectedText));
        assert_eq!(asm.push_text("garbage", MAX), Err(SioError::UnexpectedText));
        assert_eq!(asm.push_packet(d(r#"2["y"]"#)), Err(SioError::UnexpectedText));
        let (p, bins) = asm.push_binary(Bytes::from_static(b"data")).unwrap().unwrap();
        assert_eq!(p.attachments, 1);
        assert_eq!(bins, vec![Bytes::from_static(b"data")]);
        assert_eq!(asm.missing(), 0);
        // Decode errors pass through; reset drops a pending packet.
        assert_eq!(asm.push_text("2{}", MAX), Err(SioError::BadEventPayload));
        assert_eq!(asm.push_text(&format!(r#"61-4[{PH0}]"#), MAX), Ok(None));
        asm.reset();
        assert!(!asm.is_pending());
        assert_eq!(asm.push_binary(Bytes::new()), Err(SioError::UnexpectedBinary));
    }
}
