//! The gateway's own answers: short plain-text pages a person reading `curl` output understands.

use std::fmt::Display;

use bytes::Bytes;
use http::{
    HeaderValue, Response, StatusCode,
    header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE},
};
use http_body_util::Full;

use super::{filter::Refused, forbidden_body};

/// Whether the client connection stays open after the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    KeepAlive,
    Close,
}

/// A page to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) text: Bytes,
    pub(crate) then: Then,
}

impl Page {
    /// 403: the rules deny `host`. The connection stays open: the next request may be for a
    /// host that is allowed.
    pub(crate) fn forbidden(host: &str, reason: &str) -> Page {
        Page {
            status: StatusCode::FORBIDDEN,
            text: forbidden_body(host, reason).into(),
            then: Then::KeepAlive,
        }
    }

    /// A filter's refusal of a request to `host`: its status, the refusal page's text. The
    /// connection stays open where the protocol allows (an HTTP/1 request body left unread
    /// makes hyper close it after the page).
    pub(crate) fn refused(host: &str, refused: &Refused) -> Page {
        Page {
            status: refused.status,
            text: forbidden_body(host, &refused.reason).into(),
            then: Then::KeepAlive,
        }
    }

    /// 400: the request names no usable host. A client that gets this wrong is confused
    /// about where it is talking: it is not kept.
    pub(crate) fn bad_request(reason: &dyn Display) -> Page {
        Page {
            status: StatusCode::BAD_REQUEST,
            text: format!("gateway: bad request: {reason}\n").into(),
            then: Then::Close,
        }
    }

    /// 405 for CONNECT, which only a proxy the client was configured to use would serve.
    pub(crate) fn connect_refused() -> Page {
        Page {
            status: StatusCode::METHOD_NOT_ALLOWED,
            text: Bytes::from_static(
                b"gateway: CONNECT is not served here: the gateway is transparent, connect directly\n",
            ),
            then: Then::Close,
        }
    }

    /// 502 or 504: the upstream did not answer `host`'s request.
    pub(crate) fn upstream_failed(status: StatusCode, host: &str, reason: &dyn Display) -> Page {
        Page {
            status,
            text: format!("gateway: request to {host} failed: {reason}\n").into(),
            then: Then::KeepAlive,
        }
    }

    /// The response: `text/plain`, never cached (the policy behind it may change).
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.text));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.then == Then::Close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn pages_are_uncached_plain_text() {
        let response = Page::bad_request(&"no Host").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[CONNECTION], "close");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "gateway: bad request: no Host\n");
    }

    #[test]
    fn a_filter_refusal_keeps_its_status() {
        let page = Page::refused("a.test", &Refused::too_large("body over 1 MiB"));
        assert_eq!(page.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            page.text,
            "gateway: request to a.test refused: body over 1 MiB\n"
        );
    }

    #[test]
    fn a_refusal_keeps_the_connection() {
        let page = Page::forbidden("a.test", "denied");
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        assert_eq!(page.text, "gateway: request to a.test refused: denied\n");
        assert!(!page.into_response().headers().contains_key(CONNECTION));
    }
}
