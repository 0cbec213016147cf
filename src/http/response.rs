//! The response a handler gives: status, content type, extra headers and body. The driver
//! writes it with [`super::parse::write_response`].

/// An HTTP response to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status, content_type, headers: Vec::new(), body: body.into() }
    }

    /// A refusal with a JSON body `{"error": code, "message": ...}`; a 401 also names the
    /// scheme it wants (`WWW-Authenticate: Bearer`).
    pub fn refusal(status: u16, code: &str, message: &str) -> Self {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body { error: code, message }).unwrap_or_default();
        let mut r = Response::new(status, "application/json", body);
        if status == 401 {
            r.headers.push(("WWW-Authenticate", "Bearer".into()));
        }
        r
    }
}
