//! The inspector's view of exchanges, shared by the desktop app (Tauri commands) and the web
//! inspector (its API's `ggrok` fields): a row of the table ([`Summary`]) and one exchange with
//! its headers and bodies prepared for display ([`Detail`]). Bodies are only ever text to show;
//! the UI puts `text` into text nodes, never into HTML.

use serde::Serialize;

use crate::{
    frames::WsFrame,
    traffic::{CapturedBody, Exchange, Headers},
};

/// Bytes of a binary body shown as hex.
pub const HEX_LIMIT: usize = 4096;

/// One row of the traffic table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Exchange id, unique within its tunnel across restarts of the tunnel.
    pub id: u64,
    /// When the request arrived, in Unix milliseconds.
    pub started_ms: u64,
    /// As the request line had it.
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// Response status, if any.
    pub status: Option<u16>,
    /// How long the exchange took, in milliseconds.
    pub duration_ms: u64,
    /// Response body bytes.
    pub size: u64,
    /// Failure, if any.
    pub error: Option<String>,
}

impl From<&Exchange> for Summary {
    fn from(e: &Exchange) -> Self {
        Self {
            id: e.id,
            started_ms: e.started_ms,
            method: e.method.clone(),
            path: e.path.clone(),
            status: e.status,
            duration_ms: e.duration_ms,
            size: e.response_body.size,
            error: e.error.clone(),
        }
    }
}

/// A body prepared for display: the UI only ever puts `text` into a text node.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BodyView {
    /// `empty`, `json` (pretty-printed), `text` or `binary` (hex).
    pub kind: &'static str,
    /// What to show.
    pub text: String,
    /// Bytes in the whole body.
    pub size: u64,
    /// Bytes captured (at most the capture limit): "`captured` of `size` shown" when cut.
    pub captured: u64,
    /// Whether `text` shows only part of the body.
    pub truncated: bool,
}

impl BodyView {
    /// Decides how `body` is shown, using the `content-type` among `headers` as a hint.
    pub fn of(body: &CapturedBody, headers: &Headers) -> Self {
        let data = &body.data[..];
        let ctype = headers
            .get("content-type")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let (kind, text, cut) = if data.is_empty() {
            ("empty", String::new(), false)
        } else if let Some(pretty) = (ctype.contains("json") || data[0] == b'{' || data[0] == b'[')
            .then(|| serde_json::from_slice::<serde_json::Value>(data).ok())
            .flatten()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
        {
            ("json", pretty, false)
        } else if let Some(text) = utf8_text(data, body.truncated) {
            ("text", text.to_owned(), false)
        } else {
            let shown = &data[..data.len().min(HEX_LIMIT)];
            ("binary", hex_dump(shown), shown.len() < data.len())
        };
        Self {
            kind,
            text,
            size: body.size,
            captured: data.len() as u64,
            truncated: body.truncated || cut,
        }
    }
}

/// `data` as text if it is UTF-8; a capture cut in the middle of a character is text too, up to
/// that character.
fn utf8_text(data: &[u8], cut: bool) -> Option<&str> {
    match std::str::from_utf8(data) {
        Ok(text) => Some(text),
        Err(e) if cut && e.error_len().is_none() && e.valid_up_to() > 0 => {
            std::str::from_utf8(&data[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

/// `hexdump -C`'s layout: offset, 16 bytes in hex, then the same bytes as ASCII (`.` where
/// not printable).
fn hex_dump(data: &[u8]) -> String {
    data.chunks(16)
        .enumerate()
        .map(|(i, row)| {
            let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = row
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("{:08x}  {:<47}  |{ascii}|", i * 16, hex.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An exchange for the inspector pane.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    /// The row.
    #[serde(flatten)]
    pub summary: Summary,
    /// Visitor address.
    pub remote_addr: Option<String>,
    /// Whether it became a WebSocket.
    pub upgraded: bool,
    /// Request headers.
    pub request_headers: Vec<(String, String)>,
    /// Response headers.
    pub response_headers: Vec<(String, String)>,
    /// Request body.
    pub request_body: BodyView,
    /// Response body.
    pub response_body: BodyView,
    /// WebSocket frames so far, in order (up to [`crate::frames::MAX_FRAMES`]).
    pub frames: Vec<FrameView>,
    /// Frames past that cap, counted only.
    pub frames_dropped: u64,
}

/// A WebSocket frame for the inspector.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrameView {
    /// Sent by the visitor (else by the local service).
    pub from_visitor: bool,
    /// Milliseconds from the upgrade.
    pub at_ms: u64,
    /// `text`, `binary`, `continuation`, `close`, `ping` or `pong`.
    pub kind: &'static str,
    /// Payload bytes.
    pub size: u64,
    /// The first bytes: as text when they are UTF-8, else as hex.
    pub text: String,
    /// Whether `text` shows only the start of the payload.
    pub truncated: bool,
}

impl From<&WsFrame> for FrameView {
    fn from(f: &WsFrame) -> Self {
        let kind = match f.opcode {
            0 => "continuation",
            1 => "text",
            2 => "binary",
            8 => "close",
            9 => "ping",
            10 => "pong",
            _ => "other",
        };
        let cut = (f.head.len() as u64) < f.size;
        let text = match (f.opcode, utf8_text(&f.head, cut)) {
            (2, _) | (_, None) => f
                .head
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            (_, Some(t)) => t.to_owned(),
        };
        Self {
            from_visitor: f.from_visitor,
            at_ms: f.at_ms,
            kind,
            size: f.size,
            text,
            truncated: cut,
        }
    }
}

/// Recorded headers as owned pairs, for the inspector's one exchange at a time.
fn pairs(h: &Headers) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl From<&Exchange> for Detail {
    fn from(e: &Exchange) -> Self {
        Self {
            summary: e.into(),
            remote_addr: e.remote_addr.clone(),
            upgraded: e.upgraded,
            request_headers: pairs(&e.request_headers),
            response_headers: pairs(&e.response_headers),
            request_body: BodyView::of(&e.request_body, &e.request_headers),
            response_body: BodyView::of(&e.response_body, &e.response_headers),
            frames: e
                .frames
                .as_ref()
                .map(|log| log.frames().iter().map(FrameView::from).collect())
                .unwrap_or_default(),
            frames_dropped: e.frames.as_ref().map_or(0, |log| log.dropped()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_render_as_json_text_or_hex() {
        let body = |d: &[u8]| CapturedBody {
            data: bytes::Bytes::copy_from_slice(d),
            size: d.len() as u64,
            truncated: false,
        };
        let json = BodyView::of(&body(br#"{"a":[1,2]}"#), &Headers::default());
        assert_eq!(json.kind, "json");
        assert_eq!(json.text, "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
        let text = BodyView::of(&body(b"<img src=x onerror=alert(1)>"), &Headers::default());
        assert_eq!(
            (text.kind, text.text.as_str()),
            ("text", "<img src=x onerror=alert(1)>")
        );
        let bin = BodyView::of(&body(&[0xff, 0x00, 0x41]), &Headers::default());
        assert_eq!(
            (bin.kind, bin.text.as_str()),
            (
                "binary",
                format!("00000000  {:<47}  |..A|", "ff 00 41").as_str()
            )
        );
        let line = BodyView::of(&body(b"\x00ggrok tunnel!\n\xff+"), &Headers::default()).text;
        assert_eq!(
            line,
            "00000000  00 67 67 72 6f 6b 20 74 75 6e 6e 65 6c 21 0a ff  |.ggrok tunnel!..|\n\
             00000010  2b                                               |+|"
        );
        let big = vec![0xffu8; HEX_LIMIT + 10];
        let big = BodyView::of(&body(&big), &Headers::default());
        assert!(big.truncated);
        assert_eq!(big.text.lines().count(), HEX_LIMIT / 16);
        assert_eq!(BodyView::of(&body(b""), &Headers::default()).kind, "empty");
    }

    #[test]
    fn a_capture_cut_inside_a_character_is_still_text() {
        let cut = CapturedBody {
            data: bytes::Bytes::copy_from_slice(&"café".as_bytes()[..4]),
            size: 5,
            truncated: true,
        };
        let view = BodyView::of(&cut, &Headers::default());
        assert_eq!((view.kind, view.text.as_str()), ("text", "caf"));
        assert_eq!((view.captured, view.size, view.truncated), (4, 5, true));
    }
}
