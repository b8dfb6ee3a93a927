//! The modes a workload runs in: direct, or through the gateway spliced or intercepted, over
//! HTTP/1.1 or HTTP/2.

/// The name nginx's certificate covers (`*.bench.test` too); what intercepted clients ask for.
pub const DOMAIN: &str = "bench.test";
/// The name the gateway's config bypasses.
pub const BYPASS_NAME: &str = "bypass.bench.test";

/// Where a sandbox's HTTPS goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// No gateway: a cgroup without programs, straight to the upstream.
    Direct,
    /// Through the gateway, spliced raw (the name is in `bypass`).
    Bypass,
    /// Through the gateway, TLS intercepted with a forged certificate.
    Intercept,
}

/// A route and an HTTP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub route: Route,
    pub h2: bool,
}

pub const DIRECT_H1: Mode = Mode {
    route: Route::Direct,
    h2: false,
};
pub const DIRECT_H2: Mode = Mode {
    route: Route::Direct,
    h2: true,
};
pub const BYPASS_H1: Mode = Mode {
    route: Route::Bypass,
    h2: false,
};
pub const INTERCEPT_H1: Mode = Mode {
    route: Route::Intercept,
    h2: false,
};
pub const INTERCEPT_H2: Mode = Mode {
    route: Route::Intercept,
    h2: true,
};

impl Mode {
    /// E.g. "intercept h2".
    pub fn label(self) -> String {
        let route = match self.route {
            Route::Direct => "direct",
            Route::Bypass => "bypass",
            Route::Intercept => "intercept",
        };
        format!("{route} {}", if self.h2 { "h2" } else { "h1" })
    }

    /// The name clients ask for: the bypass name for bypass, the plain one otherwise.
    pub fn host(self) -> &'static str {
        match self.route {
            Route::Bypass => BYPASS_NAME,
            Route::Direct | Route::Intercept => DOMAIN,
        }
    }

    /// The direct mode this one is compared with (same HTTP version).
    pub fn baseline(self) -> Mode {
        Mode {
            route: Route::Direct,
            h2: self.h2,
        }
    }

    /// Whether the gateway is in the path.
    pub fn through_gateway(self) -> bool {
        self.route != Route::Direct
    }
}
