//! The modes a workload runs in: direct, or through the gateway spliced, intercepted or
//! intercepted with a secret for the host (the HTTP-aware path), over HTTP/1.1 or HTTP/2; a
//! bypass name bound by the gateway's DNS, which the programs leave alone at connect; and plain
//! HTTP, direct or through the gateway's HTTP path.

/// The name nginx's certificate covers (`*.bench.test` too); what intercepted clients ask for.
pub const DOMAIN: &str = "bench.test";
/// The name the gateway's config bypasses.
pub const BYPASS_NAME: &str = "bypass.bench.test";

/// Where a sandbox's connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// No gateway: a cgroup without programs, straight to the upstream.
    Direct,
    /// Through the gateway, spliced raw (the name is in `bypass`).
    Bypass,
    /// The bypass name resolved through the gateway's DNS first (untimed), so its address is
    /// bound only to a bypass name: the programs leave each connect alone (no gateway hop), and
    /// count it.
    BypassAtConnect,
    /// Through the gateway, TLS intercepted with a forged certificate.
    Intercept,
    /// Intercepted as [`Route::Intercept`], with the sandbox given a secret scoped to
    /// [`DOMAIN`]: the HTTP-aware path (hyper on both sides, placeholders substituted in
    /// headers), clients sending the placeholder in `Authorization` (see [`super::secret`]).
    InterceptSecret,
    /// Through the gateway's plain-HTTP path (port 80): each request's Host judged, the request
    /// forwarded by hyper.
    Http,
}

/// What the client speaks on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTPS on port 443.
    Https,
    /// Plain HTTP on port 80.
    Http,
}

impl Scheme {
    /// The URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }

    /// The port nginx serves it on, the one the sandbox dials.
    pub fn port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => crate::nginx::PLAIN_PORT,
        }
    }
}

/// A route, a scheme and an HTTP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub route: Route,
    pub scheme: Scheme,
    pub h2: bool,
}

pub const DIRECT_H1: Mode = Mode {
    route: Route::Direct,
    scheme: Scheme::Https,
    h2: false,
};
pub const DIRECT_H2: Mode = Mode {
    route: Route::Direct,
    scheme: Scheme::Https,
    h2: true,
};
pub const BYPASS_H1: Mode = Mode {
    route: Route::Bypass,
    scheme: Scheme::Https,
    h2: false,
};
pub const BYPASS_AT_CONNECT_H1: Mode = Mode {
    route: Route::BypassAtConnect,
    scheme: Scheme::Https,
    h2: false,
};
pub const INTERCEPT_H1: Mode = Mode {
    route: Route::Intercept,
    scheme: Scheme::Https,
    h2: false,
};
pub const INTERCEPT_H2: Mode = Mode {
    route: Route::Intercept,
    scheme: Scheme::Https,
    h2: true,
};
pub const INTERCEPT_SECRET_H1: Mode = Mode {
    route: Route::InterceptSecret,
    scheme: Scheme::Https,
    h2: false,
};
pub const INTERCEPT_SECRET_H2: Mode = Mode {
    route: Route::InterceptSecret,
    scheme: Scheme::Https,
    h2: true,
};
pub const DIRECT_HTTP_H1: Mode = Mode {
    route: Route::Direct,
    scheme: Scheme::Http,
    h2: false,
};
pub const GATEWAY_HTTP_H1: Mode = Mode {
    route: Route::Http,
    scheme: Scheme::Http,
    h2: false,
};

impl Mode {
    /// E.g. "intercept h2", "intercept + secret h1", "direct http h1", "gateway http h1".
    pub fn label(self) -> String {
        let route = match self.route {
            Route::Direct => "direct",
            Route::Bypass => "bypass",
            Route::BypassAtConnect => "bypass at connect",
            Route::Intercept => "intercept",
            Route::InterceptSecret => "intercept + secret",
            Route::Http => "gateway",
        };
        let scheme = match self.scheme {
            Scheme::Https => "",
            Scheme::Http => " http",
        };
        format!("{route}{scheme} {}", if self.h2 { "h2" } else { "h1" })
    }

    /// The name clients ask for: the bypass name for bypass, the plain one otherwise.
    pub fn host(self) -> &'static str {
        match self.route {
            Route::Bypass | Route::BypassAtConnect => BYPASS_NAME,
            Route::Direct | Route::Intercept | Route::InterceptSecret | Route::Http => DOMAIN,
        }
    }

    /// The direct mode this one is compared with (same scheme and HTTP version).
    pub fn baseline(self) -> Mode {
        Mode {
            route: Route::Direct,
            ..self
        }
    }

    /// The plain intercept mode an intercept + secret one is compared with (same HTTP version).
    pub fn without_secret(self) -> Option<Mode> {
        (self.route == Route::InterceptSecret).then_some(Mode {
            route: Route::Intercept,
            ..self
        })
    }

    /// Whether clients send the secret's placeholder (`Authorization: Bearer ...`).
    pub fn sends_secret(self) -> bool {
        self.route == Route::InterceptSecret
    }

    /// Whether a daemon serves the sandbox (compared with direct).
    pub fn through_gateway(self) -> bool {
        self.route != Route::Direct
    }

    /// Whether the sandbox's connections are redirected to the gateway's listener.
    pub fn redirected(self) -> bool {
        !matches!(self.route, Route::Direct | Route::BypassAtConnect)
    }
}
